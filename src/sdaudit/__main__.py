from sdaudit.cli import app

app()
