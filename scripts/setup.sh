#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: data sets from Debian, a venv with all three backends.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages that carry the data sets: Fashion-MNIST (images), the Python 3.11 docs (text),
# the Asterisk voice prompts (speech).
missing=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || missing+=(dataset-fashion-mnist)
[ -d /usr/share/doc/python3.11/html/_sources/library ] || missing+=(python3.11-doc)
for voice in en:en_US_f_Allison es:es_MX_f_Allison fr:fr_CA_f_June it:it_IT_m_Carlo ru:ru_RU_f_IvrvoiceRU; do
  [ -d "/usr/share/asterisk/sounds/${voice#*:}" ] || missing+=("asterisk-core-sounds-${voice%%:*}-wav")
done
[ -d /usr/share/asterisk/sounds/it_IT_f_Menardi ] || missing+=(asterisk-prompt-it-menardi-wav)
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "note: ${missing[*]} not installed (apt-get install ${missing[*]}); the tests that need them will skip" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
.venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
