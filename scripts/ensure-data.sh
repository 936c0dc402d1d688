#!/usr/bin/env bash
# Make sure the embedded default dataset (Fashion-MNIST) is present.
# Debian's dataset-fashion-mnist puts the IDX files in /usr/share/datasets/fashion-mnist/.
# Without apt or root, robustpath falls back to torchvision's download into the data root.
set -u
DIR=/usr/share/datasets/fashion-mnist
if [ -f "$DIR/train-images-idx3-ubyte.gz" ]; then exit 0; fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing Debian package dataset-fashion-mnist ..."
  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) \
    && exit 0
  echo "warning: could not install dataset-fashion-mnist; robustpath will try torchvision's download" >&2
else
  echo "note: $DIR missing and apt/root unavailable; robustpath will try torchvision's download" >&2
fi
exit 0
