# Sourced by the GPU scripts (kernels/gpu_check.sh, experiments/gpu_lm_comparison.sh) from the
# repository root with $PYTHON set: installs the wheels of ./.whl when present (a machine without
# internet) and puts the checkout on PYTHONPATH with `nestlearn/kernels` linked to `kernels/`, so
# the package need not be installed.
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
[ -e nestlearn/kernels ] || ln -s ../kernels nestlearn/kernels
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
