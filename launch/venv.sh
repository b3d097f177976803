# Sourced by launch/*.sh: creates .venv if missing and installs the project into it
# with the extras in $EXTRAS (default: test, which includes eval). The versions
# tested together are pinned in launch/constraints.txt.
EXTRAS=${EXTRAS:-test}
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
STAMP=.venv/.installed-$EXTRAS
if [ ! -f "$STAMP" ] || [ setup.py -nt "$STAMP" ] \
    || [ launch/constraints.txt -nt "$STAMP" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -c launch/constraints.txt -e ".[$EXTRAS]"
  touch "$STAMP"
  if [ "$EXTRAS" = test ]; then touch .venv/.installed-eval; fi  # test has eval's.
fi
