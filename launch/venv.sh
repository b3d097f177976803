# Sourced by launch/*.sh: creates .venv if missing and installs the project into it.
# The versions tested together are pinned in launch/constraints.txt.
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if [ ! -f .venv/.installed ] || [ setup.py -nt .venv/.installed ] \
    || [ launch/constraints.txt -nt .venv/.installed ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -c launch/constraints.txt -e ".[test]"
  touch .venv/.installed
fi
