"""tracekit's shipped data, installed as `tracekit.data`: CRUXEval with its licence
(cruxeval/), the demo's sample programs (programs/) and the real-code evaluation set
(realworld/). Found through `importlib.resources` (tracekit.programs.sources), the same in a wheel and
in an editable install of a checkout."""
