from md2bench.cli import app

app(prog_name="md2bench")
