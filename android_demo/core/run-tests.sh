#!/usr/bin/env bash
# Compile android_demo/core (plain Kotlin/JVM) and its tests with kotlinc, run them with JUnit 4.
#
#   android_demo/core/run-tests.sh            # from anywhere; exits non-zero on any failure
#   LORAGEN_DUMP=/tmp/x android_demo/core/run-tests.sh   # also dump test vectors for tools/crosscheck.py
#
# Idempotent. Installs what is missing:
#   - the Kotlin compiler from the npm package kotlin-compiler (into android_demo/core/.tools/, git-ignored)
#   - JUnit 4 + Hamcrest from Debian (apt-get install junit4; needs root, as in CI)
# Tokenizer vectors come from the repository's .venv (tools/make_tokenizer_vectors.py, the `tokenizers`
# library), written into the build directory while kotlinc runs; scripts/test.sh creates the .venv first.
# Needs JDK 17+ (java, and the JDK's Ed25519). Last line of output: "N passed, M failed".
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
KOTLIN_VERSION="${KOTLIN_VERSION:-2.4.20}"
TOOLS="$HERE/.tools"
KOTLIN_HOME="$TOOLS/kotlin-compiler-$KOTLIN_VERSION"
BUILD="${LORAGEN_KOTLIN_BUILD:-$TOOLS/build}"
JUNIT="/usr/share/java/junit4.jar"
HAMCREST="/usr/share/java/hamcrest-core.jar"

command -v java >/dev/null || { echo "run-tests.sh: java (JDK 17+) is required" >&2; exit 2; }
JAVA_MAJOR="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)"
if [ "${JAVA_MAJOR:-0}" -lt 17 ]; then echo "run-tests.sh: JDK 17+ required, found ${JAVA_MAJOR:-none}" >&2; exit 2; fi

if [ ! -x "$KOTLIN_HOME/bin/kotlinc" ]; then
    command -v npm >/dev/null || { echo "run-tests.sh: npm is required to fetch kotlin-compiler" >&2; exit 2; }
    echo "installing kotlin-compiler@$KOTLIN_VERSION (npm) into $TOOLS"
    mkdir -p "$TOOLS/npm"
    tgz="$(cd "$TOOLS/npm" && npm pack --silent "kotlin-compiler@$KOTLIN_VERSION" | tail -1)"
    rm -rf "$TOOLS/npm/package" "$KOTLIN_HOME.tmp"
    tar -xzf "$TOOLS/npm/$tgz" -C "$TOOLS/npm"
    mv "$TOOLS/npm/package" "$KOTLIN_HOME.tmp"
    chmod +x "$KOTLIN_HOME.tmp/bin/"*
    mv "$KOTLIN_HOME.tmp" "$KOTLIN_HOME"
    rm -f "$TOOLS/npm/$tgz"
fi

if [ ! -f "$JUNIT" ] || [ ! -f "$HAMCREST" ]; then
    echo "installing junit4 (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq junit4 >/dev/null
fi

VENV_PY="$REPO/.venv/bin/python"
[ -x "$VENV_PY" ] || { echo "run-tests.sh: $REPO/.venv is missing (bash scripts/test.sh creates it)" >&2; exit 2; }

STDLIB="$KOTLIN_HOME/lib/kotlin-stdlib.jar"
rm -rf "$BUILD"
mkdir -p "$BUILD"
start=$(date +%s)
# tokenizer test vectors from the Python `tokenizers` library, generated alongside the compilation
"$VENV_PY" "$HERE/tools/make_tokenizer_vectors.py" "$BUILD/tokenizer-vectors" >"$BUILD/tokenizer-vectors.log" 2>&1 &
VECTORS_PID=$!
# one kotlinc run for main + tests (one JVM start); -Werror keeps main and tests warning-free
"$KOTLIN_HOME/bin/kotlinc" -jvm-target 17 -Werror -cp "$JUNIT:$HAMCREST" -d "$BUILD/classes" \
    "$HERE/src/main/kotlin" "$HERE/src/test/kotlin" 2>&1 | grep -v '^OpenJDK 64-Bit Server VM warning' || true
if ! wait "$VECTORS_PID"; then
    cat "$BUILD/tokenizer-vectors.log"; echo "run-tests.sh: tokenizer vector generation failed"; echo "0 passed, 1 failed"; exit 1
fi
[ -f "$BUILD/classes/dev/loragen/core/TestMain.class" ] || { echo "run-tests.sh: compilation failed"; echo "0 passed, 1 failed"; exit 1; }
cp -r "$HERE/src/test/resources/." "$BUILD/classes/"
echo "compiled in $(( $(date +%s) - start )) s"

DUMP_OPT=()
if [ -n "${LORAGEN_DUMP:-}" ]; then DUMP_OPT=("-Dloragen.dump=$LORAGEN_DUMP"); fi
exec java -Xmx512m -Dloragen.golden="$REPO/tests/golden" -Dloragen.tokenizerVectors="$BUILD/tokenizer-vectors" "${DUMP_OPT[@]}" \
    -cp "$BUILD/classes:$STDLIB:$JUNIT:$HAMCREST" dev.loragen.core.TestMain
