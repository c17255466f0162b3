#!/usr/bin/env bash
# Bounded fuzzing of the verdict key reading and the verdict parser (issue
# 13), not run in CI. `cargo fuzz` needs a nightly toolchain and builds the
# whole crate (sqlx, kube, tokio...) under a sanitizer; the project builds
# on stable, so this runs the properties of tests/key_matcher.rs with many
# more generated cases instead (proptest: random keys in every tenant
# spelling and case, slugs with glob/LIKE metacharacters, arbitrary bytes,
# arbitrary hash fields), until FUZZ_SECONDS (default 600) have passed.
#
#   scripts/fuzz.sh                 # 10 minutes, rounds of 20,000 cases per property
#   FUZZ_SECONDS=120 scripts/fuzz.sh
#
# Each round uses fresh random seeds. A failure prints proptest's minimal
# failing input and is kept in tests/key_matcher.proptest-regressions (the
# case is re-run first on every later run); the script then exits 1.
# Findings are recorded in docs/FUZZING.md.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-600}"
cases="${FUZZ_CASES:-20000}"
properties=(
  the_verdict_parser_takes_any_input
  the_drain_and_the_erasure_attribute_every_key_alike
  alert_globs_match_every_spelling_and_nothing_else
  printable_names_never_collide
)

cargo test --test key_matcher --no-run
deadline=$((SECONDS + seconds))
round=0
while ((SECONDS < deadline)); do
  round=$((round + 1))
  left=$((deadline - SECONDS))
  echo "round $round: $cases cases per property, ${left}s left"
  status=0
  PROPTEST_CASES="$cases" timeout "$left" \
    cargo test --quiet --test key_matcher -- --exact "${properties[@]}" || status=$?
  if ((status == 124)); then
    echo "time is up during round $round: nothing found"
    exit 0
  fi
  if ((status != 0)); then
    echo "round $round FOUND A FAILURE (see above)"
    exit 1
  fi
done
echo "$round rounds, nothing found"
