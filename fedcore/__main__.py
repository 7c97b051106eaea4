from fedcore.app.cli import app

app(prog_name="fedcore")
