//! The shell scripts Gantry generates: the clone, the guard around steps of jobs that keep going
//! after a failure, and the gitops helper. All POSIX `sh`; values reach them through the
//! environment or positional arguments, never by pasting text into the script.

/// Where a guarded step records that the job has failed (a tiny in-memory `emptyDir`).
pub(crate) const STATE_DIR: &str = "/gantry";
pub(crate) const WORKSPACE: &str = "/workspace";

/// What a guarded step writes to its termination message when it does not run.
pub(crate) const MSG_SKIPPED: &str = "gantry:skipped";
/// Prefix of the last line of a guarded step's termination message when its command failed
/// but the container exited 0 so that the steps after it still run: `gantry:exit=<code>`.
pub(crate) const MSG_EXIT: &str = "gantry:exit=";

/// Fetches exactly one commit, depth 1, into the workspace. Credentials (when the forge gave
/// any) come from the per-job Secret through `GIT_USERNAME`/`GIT_PASSWORD`; the credential
/// helper reads them from the environment so they never appear in a command line or a file.
pub(crate) const CLONE: &str = r#"set -eu
cd /workspace
git init -q .
git remote add origin "$GANTRY_REPO_URL"
set -- -c protocol.version=2
if [ -n "${GIT_PASSWORD:-}" ]; then
  set -- "$@" -c 'credential.helper=!f() { test "$1" = get || exit 0; echo "username=${GIT_USERNAME:-gantry}"; echo "password=$GIT_PASSWORD"; }; f'
fi
git "$@" fetch -q --depth=1 --no-tags origin "$GANTRY_COMMIT_SHA"
git checkout -q --detach FETCH_HEAD
echo "checked out $GANTRY_COMMIT_SHA"
"#;

/// How a step behaves inside a job that keeps going after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Guard {
    /// `when: status` of the step.
    pub run_if: gantry_core::StatusCondition,
    /// A failure does not fail the job (`allow_failure`).
    pub allow_failure: bool,
    /// A step after this one runs on failure: a failure here must not stop the pod, so the
    /// container exits 0 and the real exit code goes to the termination message.
    pub keep_going: bool,
}

/// The guard script. `$1` is the step's own script, run with `/bin/sh -e -c`. The kubelet ends a
/// pod at the first init container that exits non-zero, so a failure that later steps must
/// survive is recorded (`/gantry/failed`, the termination message) and the container exits 0.
pub(crate) fn guard(g: Guard) -> String {
    use gantry_core::StatusCondition::*;
    let mut s = String::from("m=/dev/termination-log\n");
    match g.run_if {
        Success => s.push_str(&format!(
            "if [ -e {STATE_DIR}/failed ]; then echo {MSG_SKIPPED} > $m; exit 0; fi\n"
        )),
        Failure => s.push_str(&format!(
            "if [ ! -e {STATE_DIR}/failed ]; then echo {MSG_SKIPPED} > $m; exit 0; fi\n"
        )),
        Always => {}
    }
    s.push_str("rc=0\n/bin/sh -e -c \"$1\" || rc=$?\n");
    s.push_str("[ \"$rc\" -eq 0 ] && exit 0\n");
    // Appended: a step may have written its own summary there (a trivy scan's).
    s.push_str(&format!("echo {MSG_EXIT}$rc >> $m\n"));
    if !g.allow_failure {
        s.push_str(&format!("touch {STATE_DIR}/failed\n"));
        if !g.keep_going {
            s.push_str("exit \"$rc\"\n");
            return s;
        }
    }
    s.push_str("exit 0\n");
    s
}

/// The gitops helper's script: clone the configuration repository (depth 1), set the tag in a
/// kustomization (`images[].newTag`, adding the entry when missing) or at a YAML path, commit
/// and push; when the push is rejected because the branch moved, fetch, redo the edit on top and
/// push again (3 tries). Inputs: `GITOPS_*` variables (see `render::steps::gitops`).
pub(crate) const GITOPS: &str = r#"set -eu
export HOME=/tmp GIT_TERMINAL_PROMPT=0
# What the step did, in its log and its termination message (the step's summary).
say() { echo "gitops: $*"; echo "gitops: $*" >> /dev/termination-log 2> /dev/null || true; }
dir=$(mktemp -d)
auth() {
  if [ -n "${GITOPS_TOKEN:-}" ]; then
    git -c 'credential.helper=!f() { test "$1" = get || exit 0; echo username=gantry; echo "password=$GITOPS_TOKEN"; }; f' "$@"
  else
    git "$@"
  fi
}
branch=${GITOPS_BRANCH:-}
if [ -n "$branch" ]; then
  auth clone -q --depth=1 --branch "$branch" "$GITOPS_REPO" "$dir"
else
  auth clone -q --depth=1 "$GITOPS_REPO" "$dir"
  branch=$(git -C "$dir" rev-parse --abbrev-ref HEAD)
fi
cd "$dir"
git config user.name "${GITOPS_AUTHOR_NAME:-Gantry}"
git config user.email "${GITOPS_AUTHOR_EMAIL:-gantry@localhost}"
edit() {
  if [ -n "${GITOPS_YAML_PATH:-}" ]; then
    test -f "$GITOPS_PATH" || { echo "gitops: $GITOPS_PATH is not a file" >&2; exit 1; }
    yq -i "(.${GITOPS_YAML_PATH}) = strenv(GITOPS_TAG)" "$GITOPS_PATH"
  else
    k=
    for f in kustomization.yaml kustomization.yml Kustomization; do
      if [ -f "$GITOPS_PATH/$f" ]; then k="$GITOPS_PATH/$f"; break; fi
    done
    test -n "$k" || { echo "gitops: no kustomization in $GITOPS_PATH" >&2; exit 1; }
    if [ "$(yq '[.images[]? | select(.name == strenv(GITOPS_IMAGE))] | length' "$k")" = 0 ]; then
      yq -i '.images += [{"name": strenv(GITOPS_IMAGE), "newTag": strenv(GITOPS_TAG)}]' "$k"
    else
      yq -i '(.images[] | select(.name == strenv(GITOPS_IMAGE))).newTag = strenv(GITOPS_TAG)' "$k"
    fi
  fi
}
tries=0
while :; do
  edit
  if git diff --quiet; then say "$GITOPS_IMAGE is already at $GITOPS_TAG in $GITOPS_PATH: nothing to commit"; exit 0; fi
  git commit -q -am "$GITOPS_MESSAGE"
  if auth push -q origin "HEAD:$branch"; then
    say "pushed $(git rev-parse --short=12 HEAD) to $branch ($GITOPS_PATH: $GITOPS_IMAGE at $GITOPS_TAG)"; exit 0
  fi
  tries=$((tries + 1))
  if [ "$tries" -ge 3 ]; then echo "gitops: push rejected $tries times; giving up" >&2; exit 1; fi
  echo "gitops: push rejected (the branch moved); redoing the edit on top" >&2
  auth fetch -q --depth=1 origin "$branch"
  git reset -q --hard FETCH_HEAD
done
"#;

#[cfg(test)]
mod tests {
    use gantry_core::StatusCondition;

    use super::*;

    #[test]
    fn a_guard_stops_the_pod_only_when_nothing_later_must_run() {
        let stop = guard(Guard {
            run_if: StatusCondition::Success,
            allow_failure: false,
            keep_going: false,
        });
        assert!(stop.contains("exit \"$rc\""));
        let keep = guard(Guard {
            run_if: StatusCondition::Always,
            allow_failure: false,
            keep_going: true,
        });
        assert!(keep.ends_with("touch /gantry/failed\nexit 0\n"));
        assert!(!keep.contains("skipped"));
        let tolerated = guard(Guard {
            run_if: StatusCondition::Failure,
            allow_failure: true,
            keep_going: false,
        });
        assert!(!tolerated.contains("touch"));
        assert!(tolerated.contains("if [ ! -e /gantry/failed ]"));
    }
}
