#!/bin/bash
# checkpatch: the kernel's checkpatch.pl, set up for a repository whose C sources (BPF programs)
# live under bpf/ and follow the kernel's coding style. Run it at the repository's root.
#
# By default it checks each commit on top of the nearest commit that carries a branch or a tag
# (a pull request's commits under GitHub Actions), then the uncommitted changes. `checkpatch -h`
# says more. Exit status: 0 nothing reported, 1 something reported, 2 wrong usage or not run at
# the root of a git repository.
set -euo pipefail
export LC_ALL=C.UTF-8 # subjects are measured in characters, not bytes

CHECKPATCH_PL=${CHECKPATCH_PL:-/opt/checkpatch/checkpatch.pl}
SUBJECT_MAX=75
# The C sources checked, as a git pathspec (a '*' matches across directories), and the vendored
# headers under them, which keep the style of where they come from.
SOURCES=('bpf/*.[ch]')
VENDORED=(bpf/include/elf bpf/include/linux)
# The commits of the renovate bot (its author address) are exempt from the subject check.
RENOVATE='renovate'

# Report types that stay silent: what the kernel's style asks and these sources do otherwise.
IGNORED=(
    # errors
    COMPLEX_MACRO GIT_COMMIT_ID MULTISTATEMENT_MACRO_USE_DO_WHILE NOT_UNIFIED_DIFF
    # warnings
    COMMIT_LOG_LONG_LINE COMMIT_MESSAGE CONSTANT_CONVERSION CONST_STRUCT EMAIL_SUBJECT
    FILE_PATH_CHANGES FROM_SIGN_OFF_MISMATCH JIFFIES_COMPARISON LEADING_SPACE
    MACRO_WITH_FLOW_CONTROL PRINTK_WITHOUT_KERN_LEVEL TRAILING_SEMICOLON TRAILING_STATEMENTS
    VOLATILE
    # checks
    BIT_MACRO LONG_LINE_COMMENT
    # not a report: ignoring it makes every C99 // comment an error (see fixes.pl for SPDX lines)
    C99_COMMENT_TOLERANCE
)
# Types checkpatch.pl reports as warnings in a patch but only as checks when it reads whole files
# (-f): with -a -i, a second pass over the files reports these, and only these, as checks.
DOWNGRADED_IN_FILES=(AVOID_BUG DEPRECATED_TERM FSF_MAILING_ADDRESS LONG_LINE LONG_LINE_STRING TYPO_SPELLING)

# The kernel version checkpatch.pl comes from, as the image build recorded it.
version() {
    local v
    v=$(sed -n 's/^linux \([^ ]*\) .*/\1/p' "${CHECKPATCH_PL%/*}/provenance" 2>/dev/null) || true
    echo "from Linux ${v:-(version unknown)}"
}

usage() {
    cat <<EOF
usage: checkpatch [-a] [-i] [-q] [-h] [-- CHECKPATCH.PL OPTIONS...]

Runs $CHECKPATCH_PL ($(version)) on the C sources under
bpf/ but ${VENDORED[*]}, from the root of a repository:
  - without -a: each commit on top of the nearest ancestor that has a branch or a tag, oldest
    first, then the uncommitted changes; a commit that touches no C source is checked for its
    message alone. With GITHUB_REF set (GitHub Actions), the pull request's commits instead
    (HEAD^1..HEAD^2 of the merge commit actions/checkout makes; fetch them, e.g. fetch-depth: 0),
    and findings are printed as ::error:: and ::warning:: annotations.
  - every commit's subject must be at most $SUBJECT_MAX characters (renovate's commits excepted).

  -a   check every C source file under bpf/ instead of commits
  -i   indulgent: without --strict; with -a, a second pass reports the types checkpatch.pl
       downgrades for files (${DOWNGRADED_IN_FILES[*]})
  -q   pass --quiet to checkpatch.pl
  -h   this help
  --   the rest goes to checkpatch.pl, after the default options (so it can override them):
       --no-tree --strict --no-summary --show-types --ignore <list>
       e.g. checkpatch -a -- --fix-inplace, checkpatch -- --ignore CAMELCASE
CHECKPATCH_PL=FILE runs another checkpatch.pl.
EOF
}

fail_usage() {
    printf 'checkpatch: %s\n' "$1" >&2
    exit 2
}

# Our options come before a '--', checkpatch.pl's after it.
ours=()
while (($#)) && [[ $1 != -- ]]; do
    ours+=("$1")
    shift
done
(($#)) && shift
passthrough=("$@")
set -- "${ours[@]}"
all=0 strict=1 quiet=0
while getopts ':aiqh' option; do
    case $option in
    a) all=1 ;;
    i) strict=0 ;;
    q) quiet=1 ;;
    h) usage; exit 0 ;;
    *) fail_usage "unknown option -$OPTARG: see checkpatch -h" ;;
    esac
done
shift $((OPTIND - 1))
(($# == 0)) || fail_usage "unexpected argument '$1': options for checkpatch.pl go after --"

github=0
[[ -n ${GITHUB_REF:-} ]] && github=1

join() {
    local IFS=,
    echo "$*"
}

# checkpatch.pl with the default options; a pass's own options and its input come as arguments.
checkpatch_pl() {
    local options=(--no-tree --no-summary --show-types --ignore "$(join "${IGNORED[@]}")")
    ((strict)) && options+=(--strict)
    ((quiet)) && options+=(--quiet)
    # Annotation lines must start with the report itself, not a colour code.
    ((github)) && options+=(--color=never)
    "$CHECKPATCH_PL" "${options[@]}" "$@" "${passthrough[@]}" | annotate
}

# Under GitHub Actions, findings become annotations: errors as ::error::, the rest as ::warning::.
annotate() {
    if ((github)); then
        sed -E -e 's/^((\x1b\[[0-9;]*m)?ERROR:)/::error::\1/' \
            -e 's/^((\x1b\[[0-9;]*m)?(WARNING|CHECK):)/::warning::\1/'
    else
        cat
    fi
}

heading() {
    if [[ -t 1 ]]; then
        printf '\033[1;34m%s\033[0m\n' "$*"
    else
        printf '%s\n' "$*"
    fi
}

status=0

# -- -a: the files ----------------------------------------------------------------------------

if ((all)); then
    [[ -d bpf ]] || fail_usage "no bpf/ directory here: run checkpatch at the root of the repository"
    prune=()
    for dir in "${VENDORED[@]}"; do prune+=(-path "$dir" -prune -o); done
    mapfile -d '' files < <(find bpf "${prune[@]}" -type f -name '*.[ch]' -print0 | sort -z)
    ((${#files[@]})) || fail_usage "no C sources under bpf/: run checkpatch at the root of the repository"
    heading "checking ${#files[@]} files under bpf/"
    checkpatch_pl -f "${files[@]}" || status=1
    if ((!strict)); then
        heading "second pass: $(join "${DOWNGRADED_IN_FILES[@]}"), which checkpatch.pl only reports as checks in files"
        strict=1
        checkpatch_pl --types "$(join "${DOWNGRADED_IN_FILES[@]}")" -f "${files[@]}" || status=1
    fi
    heading "checkpatch: ${#files[@]} files checked, $([[ $status == 0 ]] && echo 'nothing reported' || echo 'see above')"
    exit "$status"
fi

# -- commits --------------------------------------------------------------------------------

git rev-parse --is-inside-work-tree >/dev/null 2>&1 ||
    fail_usage "$PWD is not in a git repository: run checkpatch at the root of one (or use -a)"
[[ $(git rev-parse --show-prefix) == "" ]] ||
    fail_usage "run checkpatch at the root of the repository ($(git rev-parse --show-toplevel)), not in $PWD"
pathspec=("${SOURCES[@]}")
for dir in "${VENDORED[@]}"; do pathspec+=(":(exclude)$dir"); done

# The range of commits to check, and how to say where it comes from.
range='' origin=''
if ((github)) && git rev-parse -q --verify 'HEAD^2' >/dev/null; then
    pr=${GITHUB_REF#refs/pull/}
    range='HEAD^1..HEAD^2' origin="of pull request #${pr%/merge}"
else
    # The first commit below HEAD that git log decorates (a branch, a remote branch or a tag).
    read -r base refs < <(git log --simplify-by-decoration --format='%H %D' -n 2 HEAD | sed -n 2p) || true
    if [[ -n ${base:-} ]]; then
        ref=${refs%%,*}
        range="$base..HEAD" origin="on top of ${ref#tag: }"
    fi
fi
commits=()
[[ -z $range ]] || mapfile -t commits < <(git rev-list --reverse --no-merges "$range")
if [[ -z $range ]]; then
    heading "no branch or tag below HEAD: no commits to check"
else
    heading "${#commits[@]} commit(s) $origin"
fi

# What checkpatch.pl reads for one commit: its patch, limited to the sources; or, when it does not
# touch them, its message over an empty diff (checkpatch.pl checks sign-offs only in a patch).
commit_patch() {
    if [[ -n $(git diff-tree --root --no-commit-id --name-only -r "$1" -- "${pathspec[@]}") ]]; then
        git format-patch --stdout -1 "$1" -- "${pathspec[@]}"
    else
        git log -1 --format=email "$1"
        printf -- '---\ndiff --git a/commit-message-only b/commit-message-only\n'
    fi
}

check_subject() {
    local sha=$1 subject author
    author=$(git log -1 --format=%ae "$sha")
    [[ ${author,,} == *"$RENOVATE"* ]] && return 0
    subject=$(git log -1 --format=%s "$sha")
    if ((${#subject} > SUBJECT_MAX)); then
        echo "ERROR:SUBJECT_WIDTH: the subject is ${#subject} characters long, more than $SUBJECT_MAX" | annotate
        return 1
    fi
}

index=0
for sha in "${commits[@]}"; do
    index=$((index + 1))
    heading "[$index/${#commits[@]}] $(git log -1 --format='%h %s' "$sha")"
    commit_patch "$sha" | checkpatch_pl - || status=1
    check_subject "$sha" || status=1
done

if ((!github)) && [[ -n $(git diff HEAD --name-only -- "${pathspec[@]}") ]]; then
    heading "uncommitted changes"
    git diff HEAD -- "${pathspec[@]}" | checkpatch_pl - || status=1
fi

heading "checkpatch: $([[ $status == 0 ]] && echo 'nothing reported' || echo 'problems reported above')"
exit "$status"
