#!/bin/sh
set -e
check() {
  if [ "$1" = "$2" ]; then echo "ok: $3"; else echo "FAIL: $3: got '$1', want '$2'" >&2; exit 1; fi
}
check "$(sh ./greet.sh)" "Hello, world!" "greets the world by default"
check "$(sh ./greet.sh Ada)" "Hello, Ada!" "greets by name"
check "$(GREETING=Hi sh ./greet.sh Bob)" "Hi, Bob!" "uses GREETING"
