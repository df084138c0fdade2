def shout(name):  # << START_OF_TRACE
    greeting = "héllo " + name
    return greeting.upper()

# tracekit-call: shout("李")
