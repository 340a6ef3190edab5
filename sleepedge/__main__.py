from sleepedge.cli import run

run()
