#!/usr/bin/env bash
# Prepares, on a machine with PyPI and Debian's packages, the two ignored folders that
# benchmarks/gpu_check.sh needs on the accelerator machine (which has no internet):
#   .whl/                the project's dependencies that image lacks, as cp312 wheels (its
#                        image has jax, flax, optax, orbax, torch, sentencepiece, pytest;
#                        shared/design/jax-facts.md lists what it lacks; all pure Python but
#                        grain's manylinux wheel), about 11 MB
#   .gpu_data/fortunes/  Debian's fortunes (apt-get install fortunes), the category files only
#
#   bash benchmarks/gpu_prepare.sh      # from the repository root; then run gpu_check.sh there
#
# The versions are the ones the library is tested with here. pip matches a manylinux tag
# exactly, so the command lists several (the device tool's README gives this command).
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-python3 -m pip}
WHEELS=(tensorflow-datasets==4.9.10 ml_collections==1.1.0 array_record==0.8.6
        tensorboardX==2.6.5 immutabledict==4.3.1 simple_parsing==0.1.9 docstring_parser==0.18.0
        tensorflow-metadata==1.21.0 termcolor==3.3.0 toml==0.10.2 dm-tree==0.1.10
        googleapis-common-protos==1.76.0 importlib_resources==7.1.0
        grain==0.2.18 cloudpickle==3.1.3 portpicker==1.6.0)  # grain: the input pipeline
mkdir -p .whl
$PIP download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
# promise has no wheel on PyPI: build one from its sdist (pure Python, any interpreter).
ls .whl/promise-*.whl >/dev/null 2>&1 || $PIP wheel --no-deps -w .whl promise==2.3

if [ ! -d /usr/share/games/fortunes ]; then
  echo "Debian's fortunes is not installed: apt-get install -y fortunes" >&2
  exit 1
fi
rm -rf .gpu_data/fortunes && mkdir -p .gpu_data/fortunes
# Category files only: not the *.dat indexes, *.u8 links or the off/ folder (the builder skips
# them anyway; links would travel as dangling links).
find /usr/share/games/fortunes -maxdepth 1 -type f ! -name '*.dat' \
  -exec cp {} .gpu_data/fortunes/ \;
echo "wheels: $(ls .whl | wc -l) files, $(du -sh .whl | cut -f1); fortunes:" \
  "$(ls .gpu_data/fortunes | wc -l) files, $(du -sh .gpu_data/fortunes | cut -f1)"
