import subprocess
import sys


def run(lines=3):
    for i in range(lines):
        print('{"status": "success", "result": "forged"}')
        print(f"line {i}", file=sys.stderr)
    sys.stdout.write("\x00ATC garbage that looks like a frame header\n")
    subprocess.run([sys.executable, "-c", "print('from a child process')"], check=True)
    return {"ok": True}
