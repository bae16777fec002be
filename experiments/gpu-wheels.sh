#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the wheels a lent GPU machine lacks for experiments/gpu-session.sh: MLflow and
# Optuna with their dependency closure for the device's Python 3.12 (manylinux x86_64), minus what its image
# already holds (the names below, from the device notes' package list of 2026-11-17). Run here, with PyPI
# reachable; the result is about 37 MB (the device call carries at most 64 MiB with the working tree).
#   bash experiments/gpu-wheels.sh
set -eu
cd "$(dirname "$0")/.."
MLFLOW=$(python3 -c "import mlflow; print(mlflow.__version__)" 2>/dev/null || echo 3.17.2)
OPTUNA=$(python3 -c "import optuna; print(optuna.__version__)" 2>/dev/null || echo 5.1.0)
# in the device image already: leave them out (two versions of one package stop the install there)
DEVICE_HAS="aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs certifi charset-normalizer click
cloudpickle contourpy cycler fonttools frozenlist h11 idna jinja2 joblib kiwisolver markupsafe matplotlib multidict
narwhals numpy packaging pandas pillow propcache protobuf pyarrow pyparsing python-dateutil pyyaml requests
scikit-learn scipy six threadpoolctl tqdm typing-extensions urllib3 werkzeug yarl zipp"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
  -d "$tmp" "mlflow==$MLFLOW" "optuna==$OPTUNA"
rm -rf .whl && mkdir .whl
for wheel in "$tmp"/*.whl; do
  name=$(basename "$wheel" | sed 's/-[0-9].*//' | tr 'A-Z_.' 'a-z--')
  case " $(echo $DEVICE_HAS) " in *" $name "*) ;; *) cp "$wheel" .whl/ ;; esac
done
echo "$(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/ (mlflow $MLFLOW, optuna $OPTUNA, for Python 3.12)"
