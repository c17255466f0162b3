#!/usr/bin/env bash
# The pull-request check of a repository that holds archiver manifests
# (the GitHub Actions workflow beside this file runs it; other CI systems run
# the same script):
#
#   1. `archiver-operator validate` on every manifest under the manifest
#      paths (the changed ones and the rest: two RetentionPolicies or a
#      duplicate shard id only show across files);
#   2. `archiver-operator plan --format markdown` for every changed file that
#      holds a RetentionPolicy, against a READ-ONLY database URL, written to
#      $PLAN_OUTPUT for the pull-request comment;
#   3. exit non-zero when a manifest is invalid, a plan fails, or a plan
#      needs the confirm-shrink annotation that the change does not carry.
#
# Usage: check-manifests.sh BASE_REF [MANIFEST_PATH...]   (default path: .)
# Environment:
#   DATABASE_URL  read-only Postgres URL of the live database (only needed
#                 when a RetentionPolicy changed)
#   ARCHIVER      the archiver-operator binary (default: archiver-operator)
#   PLAN_OUTPUT   where the markdown goes (default: plan.md)
# Exit: 0 passed; 1 invalid manifest or plan error; 3 a shrink needs the
# confirm-shrink annotation; 2 usage.
set -euo pipefail

base=${1:?usage: check-manifests.sh BASE_REF [MANIFEST_PATH...]}
shift
paths=("$@")
[ ${#paths[@]} -gt 0 ] || paths=(.)
archiver=${ARCHIVER:-archiver-operator}
output=${PLAN_OUTPUT:-plan.md}
: >"$output"

if ! git rev-parse --verify --quiet "$base^{commit}" >/dev/null; then
    echo "base ref '$base' not found (fetch it: actions/checkout with fetch-depth: 0)" >&2
    exit 2
fi

status=0
echo "== validate ${paths[*]}"
if ! "$archiver" validate -f "${paths[@]}"; then
    status=1
fi

# Changed (added, copied, modified, renamed) YAML files under the paths.
mapfile -t changed < <(git diff --name-only --diff-filter=ACMR "$base"...HEAD -- "${paths[@]}" |
    grep -E '\.ya?ml$' || true)
policies=()
for file in "${changed[@]}"; do
    if grep -Eq '^kind:[[:space:]]*RetentionPolicy[[:space:]]*$' "$file"; then
        policies+=("$file")
    fi
done

for policy in "${policies[@]}"; do
    echo "== plan $policy"
    if [ -z "${DATABASE_URL:-}" ]; then
        echo "$policy changed but DATABASE_URL is not set: the plan cannot be computed" >&2
        status=1
        continue
    fi
    plan_status=0
    "$archiver" plan -f "$policy" --format markdown >"$output.part" || plan_status=$?
    {
        echo "### Retention plan for \`$policy\`"
        echo
        cat "$output.part"
        echo
    } >>"$output"
    rm -f "$output.part"
    case $plan_status in
    0) ;;
    3)
        echo "$policy: a window shrinks beyond the shrink guard; add the confirm-shrink annotation with the hash the plan shows" >&2
        [ $status -eq 1 ] || status=3
        ;;
    *)
        echo "$policy: plan failed (exit $plan_status)" >&2
        status=1
        ;;
    esac
done

if [ ${#policies[@]} -eq 0 ]; then
    echo "no RetentionPolicy changed: no plan"
fi
exit $status
