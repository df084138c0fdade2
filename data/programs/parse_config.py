def parse_line(line):
    key, value = line.split("=")
    return key.strip(), value.strip()


def parse_config(text):  # << START_OF_TRACE
    config = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, value = parse_line(line)
        config[key] = int(value) if value.isdigit() else value
    return config

# tracekit-call: parse_config("# db\nport = 5432\noops")
