#!/usr/bin/env bash
# Bounded coverage-guided fuzzing (cargo fuzz / libFuzzer) of the verdict key
# reading and parser and of the manifest reader and validator (issue 13).
# Not run in CI. Needs a nightly toolchain and cargo-fuzz:
#
#   rustup toolchain install nightly
#   cargo install cargo-fuzz --locked
#
#   scripts/fuzz.sh                        # 300 s per target
#   FUZZ_SECONDS=60 scripts/fuzz.sh        # shorter
#   FUZZ_TARGETS=manifest scripts/fuzz.sh  # one target
#   FUZZ_PROPTEST=1 scripts/fuzz.sh        # then one round of the proptest
#                                          # properties of tests/key_matcher.rs
#
# The fuzz crate lives in fuzz/ with its own workspace, lock file and
# target dir: the main crate's builds, tests, clippy and fmt never see it.
# Each target starts from the committed seeds (fuzz/seeds/verdict_key, the
# manifests of examples/) plus the corpus it grew on earlier runs
# (fuzz/corpus/<target>, not committed). A crash or timeout stops the run:
# libFuzzer writes the input to fuzz/artifacts/<target>/, the script exits 1
# and prints how to minimise it (`cargo +nightly fuzz tmin <target> <file>`).
# Record what a run found in docs/FUZZING.md.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${FUZZ_SECONDS:-300}"
# One input may take at most this long (libFuzzer -timeout), and at most
# this much memory (-rss_limit_mb): a slow or hungry input is a finding.
input_seconds="${FUZZ_INPUT_SECONDS:-10}"
rss_mb="${FUZZ_RSS_MB:-2048}"
read -r -a targets <<<"${FUZZ_TARGETS:-verdict_key manifest}"

seeds_of() {
  case "$1" in
    verdict_key) echo seeds/verdict_key ;;
    manifest) echo ../examples ;;
  esac
}

# -max_len: mutating multi-MiB inputs would cost most of the time, and what
# makes YAML expensive (aliases, nesting) is small. The 4 MiB limit of the
# reader is checked by its unit tests, not reached here.
max_len_of() {
  case "$1" in
    manifest) echo "${FUZZ_MANIFEST_MAX_LEN:-65536}" ;;
    *) echo 4096 ;;
  esac
}

for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  echo "== $target: ${seconds}s"
  status=0
  cargo +nightly fuzz run "$target" "corpus/$target" "$(seeds_of "$target")" -- \
    -max_total_time="$seconds" -timeout="$input_seconds" -rss_limit_mb="$rss_mb" \
    -max_len="$(max_len_of "$target")" -print_final_stats=1 || status=$?
  if ((status != 0)); then
    echo "$target FOUND A FAILURE (exit $status); inputs in fuzz/artifacts/$target/:"
    ls -l "artifacts/$target" || true
    echo "minimise: cd fuzz && cargo +nightly fuzz tmin $target artifacts/$target/<file>"
    exit 1
  fi
done

if [[ "${FUZZ_PROPTEST:-0}" == 1 ]]; then
  # The structured properties (every tenant spelling in random case, slugs
  # with glob/LIKE metacharacters, the erasure's matcher against the
  # drain's reading), which blind mutation rarely reaches: one round.
  cd ..
  PROPTEST_CASES="${FUZZ_CASES:-20000}" cargo test --quiet --test key_matcher -- --exact \
    the_verdict_parser_takes_any_input \
    the_drain_and_the_erasure_attribute_every_key_alike \
    alert_globs_match_every_spelling_and_nothing_else \
    printable_names_never_collide
fi
echo "nothing found"
