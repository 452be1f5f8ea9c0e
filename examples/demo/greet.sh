#!/bin/sh
# Greets whoever is named, with $GREETING (default "Hello").
name=${1:-world}
echo "${GREETING:-Hello}, $name!"
