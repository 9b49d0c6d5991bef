from vitdense.cli import run

run()
