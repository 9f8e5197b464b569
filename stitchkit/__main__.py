from .cli import main

try:
    code = main()
except KeyboardInterrupt:  # Ctrl-C outside a command's run (parsing, or after it returned)
    code = 130
raise SystemExit(code)
