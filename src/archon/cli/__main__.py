from archon.cli import app

app()
