from fedcore.cli import app

app(prog_name="fedcore")
