// Offline tests of stages.yaml: the pod stages are run through kwok's own lifecycle code (stage
// matching, jq selectors and delays, Go-template rendering of a typed *corev1.Pod as kwok does,
// JSON merge patch of the status with its resourceVersion precondition) in a
// loop until no stage matches, and the whole sequence of container states is compared with what
// a kubelet would show. No cluster needed: `cd tests/cluster/kwok && go test ./...`.
package stages_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"

	"sigs.k8s.io/kwok/pkg/apis/internalversion"
	"sigs.k8s.io/kwok/pkg/config"
	"sigs.k8s.io/kwok/pkg/utils/gotpl"
	"sigs.k8s.io/kwok/pkg/utils/lifecycle"
)

var ctx = context.Background()

func podLifecycle(t *testing.T) lifecycle.Lifecycle {
	t.Helper()
	objs, err := config.Load(ctx, "stages.yaml")
	if err != nil {
		t.Fatalf("load stages.yaml: %v", err)
	}
	var pods []*internalversion.Stage
	for _, s := range config.FilterWithType[*internalversion.Stage](objs) {
		if s.Spec.ResourceRef.Kind == "Pod" {
			pods = append(pods, s)
		}
	}
	if len(pods) != 2 {
		t.Fatalf("expected 2 pod stages, got %d", len(pods))
	}
	lc, err := lifecycle.NewLifecycle(pods)
	if err != nil {
		t.Fatalf("lifecycle: %v", err)
	}
	return lc
}

// step is one transition: the stage, its delay and the state after it.
type step struct {
	Stage string
	Delay time.Duration
	State string
}

// run plays the stages on pod until none matches (at most 30 transitions).
func run(t *testing.T, pod map[string]any) ([]step, map[string]any) {
	t.Helper()
	lc := podLifecycle(t)
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	fm := gotpl.FuncMap{
		"Now":         func() string { return clock.Format(time.RFC3339Nano) },
		"NodeIPWith":  func(args ...any) string { return "10.0.0.1" },
		"PodIPWith":   func(args ...any) string { return "10.0.1.1" },
		"NodeIPsWith": func(args ...any) []string { return []string{"10.0.0.1"} },
		"PodIPsWith":  func(args ...any) []string { return []string{"10.0.1.1"} },
	}
	renderer := gotpl.NewRenderer(fm)
	var steps []step
	for i := 0; i < 30; i++ {
		// kwok hands its stages a typed *corev1.Pod; so do we.
		raw, _ := json.Marshal(pod)
		typed := &corev1.Pod{}
		if err := json.Unmarshal(raw, typed); err != nil {
			t.Fatalf("pod: %v", err)
		}
		event := &lifecycle.Event{Labels: typed.Labels, Annotations: typed.Annotations, Data: typed}
		stage, err := lc.Match(ctx, event)
		if err != nil {
			t.Fatalf("match: %v", err)
		}
		if stage == nil {
			return steps, pod
		}
		delay, _, err := stage.Delay(ctx, event, clock)
		if err != nil {
			t.Fatalf("delay of %s: %v", stage.Name(), err)
		}
		clock = clock.Add(delay)
		deleted := false
		_, err = stage.DoSteps(0, nil, typed, renderer,
			func(*internalversion.StageEvent) error { return nil },
			func() error { deleted = true; return nil },
			func(p *lifecycle.Patch) error {
				if p.Subresource != "status" || p.Type != "application/merge-patch+json" {
					return fmt.Errorf("unexpected patch %s %s", p.Subresource, p.Type)
				}
				// The API server's precondition: the patch names the current resourceVersion.
				var pre struct {
					Metadata struct {
						ResourceVersion string `json:"resourceVersion"`
					} `json:"metadata"`
				}
				if err := json.Unmarshal(p.Data, &pre); err != nil {
					return err
				}
				if pre.Metadata.ResourceVersion != typed.ResourceVersion {
					return fmt.Errorf("patch for resourceVersion %q, pod is at %q", pre.Metadata.ResourceVersion, typed.ResourceVersion)
				}
				orig, _ := json.Marshal(pod)
				merged, err := jsonpatch.MergePatch(orig, p.Data)
				if err != nil {
					return fmt.Errorf("merge %s: %w", p.Data, err)
				}
				next := map[string]any{}
				if err := json.Unmarshal(merged, &next); err != nil {
					return err
				}
				rv, _ := strconv.Atoi(typed.ResourceVersion)
				next["metadata"].(map[string]any)["resourceVersion"] = strconv.Itoa(rv + 1)
				pod = next
				return nil
			},
			func(*lifecycle.Apply) error { return fmt.Errorf("unexpected apply") },
		)
		if err != nil {
			t.Fatalf("steps of %s: %v", stage.Name(), err)
		}
		if deleted {
			steps = append(steps, step{stage.Name(), delay, "deleted"})
			return steps, nil
		}
		steps = append(steps, step{stage.Name(), delay, summary(pod)})
	}
	t.Fatalf("no end after 30 transitions: %v", steps)
	return nil, nil
}

func strMap(v any) map[string]string {
	m, _ := v.(map[string]any)
	out := map[string]string{}
	for k, x := range m {
		out[k], _ = x.(string)
	}
	return out
}

// summary renders a pod status as "Phase | init: a=running b=0 c=waiting | main=running | Ready".
func summary(pod map[string]any) string {
	st, _ := pod["status"].(map[string]any)
	list := func(key string) string {
		var parts []string
		items, _ := st[key].([]any)
		for _, it := range items {
			c := it.(map[string]any)
			state := c["state"].(map[string]any)
			s := "?"
			switch {
			case state["waiting"] != nil:
				s = "waiting"
			case state["running"] != nil:
				s = "running"
			case state["terminated"] != nil:
				s = fmt.Sprint(state["terminated"].(map[string]any)["exitCode"])
			}
			parts = append(parts, fmt.Sprintf("%s=%s", c["name"], s))
		}
		return strings.Join(parts, " ")
	}
	var conds []string
	cs, _ := st["conditions"].([]any)
	for _, it := range cs {
		c := it.(map[string]any)
		if c["status"] == "True" {
			conds = append(conds, c["type"].(string))
		}
	}
	return fmt.Sprintf("%s | init: %s | %s | %s", st["phase"], list("initContainerStatuses"), list("containerStatuses"), strings.Join(conds, ","))
}

func newPod(annotations map[string]any, inits []map[string]any, containers ...string) map[string]any {
	var ics []any
	for _, c := range inits {
		ics = append(ics, c)
	}
	var cs []any
	for _, n := range containers {
		cs = append(cs, map[string]any{"name": n, "image": "img/" + n})
	}
	spec := map[string]any{"nodeName": "kwok-node-0", "restartPolicy": "Never", "containers": cs}
	if len(ics) > 0 {
		spec["initContainers"] = ics
	}
	return map[string]any{
		"apiVersion": "v1",
		"kind":       "Pod",
		"metadata":   map[string]any{"name": "p", "namespace": "gantry-builds", "uid": "u", "resourceVersion": "100", "annotations": annotations},
		"spec":       spec,
		"status": map[string]any{
			"phase":    "Pending",
			"qosClass": "BestEffort",
			"conditions": []any{map[string]any{
				"type": "PodScheduled", "status": "True", "lastProbeTime": nil, "lastTransitionTime": "2025-12-31T23:59:59Z",
			}},
		},
	}
}

func ic(name string) map[string]any { return map[string]any{"name": name, "image": "img/" + name} }
func sidecar(name string) map[string]any {
	return map[string]any{"name": name, "image": "img/" + name, "restartPolicy": "Always"}
}

func check(t *testing.T, got []step, want []string) {
	t.Helper()
	var states []string
	for _, s := range got {
		states = append(states, s.State)
	}
	if diff := cmp.Diff(want, states); diff != "" {
		t.Errorf("sequence (-want +got):\n%s", diff)
	}
}

const ms = time.Millisecond

func TestStepsInOrderWithExitCodeAndDurations(t *testing.T) {
	pod := newPod(map[string]any{
		"gantry.dev/exit-codes":   "clone=0, test=3",
		"gantry.dev/durations-ms": "build=250,*=40",
	}, []map[string]any{ic("clone"), ic("build"), ic("test"), ic("never")}, "main")
	steps, last := run(t, pod)
	check(t, steps, []string{
		"Pending | init: clone=waiting build=waiting test=waiting never=waiting | main=waiting | PodScheduled,PodReadyToStartContainers",
		"Pending | init: clone=running build=waiting test=waiting never=waiting | main=waiting | PodScheduled,PodReadyToStartContainers",
		"Pending | init: clone=0 build=waiting test=waiting never=waiting | main=waiting | PodScheduled,PodReadyToStartContainers",
		"Pending | init: clone=0 build=running test=waiting never=waiting | main=waiting | PodScheduled,PodReadyToStartContainers",
		"Pending | init: clone=0 build=0 test=waiting never=waiting | main=waiting | PodScheduled,PodReadyToStartContainers",
		"Pending | init: clone=0 build=0 test=running never=waiting | main=waiting | PodScheduled,PodReadyToStartContainers",
		"Failed | init: clone=0 build=0 test=3 never=waiting | main=waiting | PodScheduled,PodReadyToStartContainers",
	})
	var delays []time.Duration
	for _, s := range steps {
		delays = append(delays, s.Delay)
	}
	if diff := cmp.Diff([]time.Duration{20 * ms, 20 * ms, 40 * ms, 20 * ms, 250 * ms, 20 * ms, 40 * ms}, delays); diff != "" {
		t.Errorf("delays (-want +got):\n%s", diff)
	}
	// The failed container says so the way a kubelet does.
	st := last["status"].(map[string]any)
	test := st["initContainerStatuses"].([]any)[2].(map[string]any)
	term := test["state"].(map[string]any)["terminated"].(map[string]any)
	if term["reason"] != "Error" || term["exitCode"] != float64(3) || test["ready"] != false {
		t.Errorf("test container status: %v", test)
	}
	if term["startedAt"] == term["finishedAt"] {
		t.Errorf("startedAt should be kept from the running state: %v", term)
	}
	if st["podIP"] != "10.0.1.1" || st["hostIP"] != "10.0.0.1" || st["startTime"] == nil {
		t.Errorf("addresses: %v", st)
	}
}

func TestSidecarsRunUntilContainersEnd(t *testing.T) {
	pod := newPod(map[string]any{"gantry.dev/exit-codes": "main=0"},
		[]map[string]any{ic("clone"), sidecar("postgres"), ic("step-1")}, "main")
	steps, last := run(t, pod)
	check(t, steps, []string{
		"Pending | init: clone=waiting postgres=waiting step-1=waiting | main=waiting | PodScheduled,PodReadyToStartContainers",
		"Pending | init: clone=running postgres=waiting step-1=waiting | main=waiting | PodScheduled,PodReadyToStartContainers",
		"Pending | init: clone=0 postgres=waiting step-1=waiting | main=waiting | PodScheduled,PodReadyToStartContainers",
		"Pending | init: clone=0 postgres=running step-1=waiting | main=waiting | PodScheduled,PodReadyToStartContainers",
		"Pending | init: clone=0 postgres=running step-1=running | main=waiting | PodScheduled,PodReadyToStartContainers",
		"Pending | init: clone=0 postgres=running step-1=0 | main=waiting | PodScheduled,PodReadyToStartContainers",
		"Running | init: clone=0 postgres=running step-1=0 | main=running | PodScheduled,PodReadyToStartContainers,Initialized,Ready,ContainersReady",
		"Succeeded | init: clone=0 postgres=0 step-1=0 | main=0 | PodScheduled,PodReadyToStartContainers,Initialized",
	})
	pg := last["status"].(map[string]any)["initContainerStatuses"].([]any)[1].(map[string]any)
	if pg["restartCount"] != float64(0) {
		t.Errorf("sidecar: %v", pg)
	}
	// Conditions keep their order and PodScheduled keeps its time.
	conds := last["status"].(map[string]any)["conditions"].([]any)
	if c := conds[0].(map[string]any); c["type"] != "PodScheduled" || c["lastTransitionTime"] != "2025-12-31T23:59:59Z" {
		t.Errorf("PodScheduled: %v", c)
	}
}

func TestFailingInitStopsSidecars(t *testing.T) {
	pod := newPod(map[string]any{"gantry.dev/exit-codes": "step-1=1,db=137"},
		[]map[string]any{sidecar("db"), ic("step-1"), ic("step-2")}, "main")
	steps, _ := run(t, pod)
	check(t, steps, []string{
		"Pending | init: db=waiting step-1=waiting step-2=waiting | main=waiting | PodScheduled,PodReadyToStartContainers",
		"Pending | init: db=running step-1=waiting step-2=waiting | main=waiting | PodScheduled,PodReadyToStartContainers",
		"Pending | init: db=running step-1=running step-2=waiting | main=waiting | PodScheduled,PodReadyToStartContainers",
		"Failed | init: db=137 step-1=1 step-2=waiting | main=waiting | PodScheduled,PodReadyToStartContainers",
	})
}

func TestNoInitContainersAndFailingMain(t *testing.T) {
	pod := newPod(map[string]any{"gantry.dev/exit-codes": "*=2,ok=0", "gantry.dev/durations-ms": "a=10,ok=500"}, nil, "a", "ok")
	steps, _ := run(t, pod)
	check(t, steps, []string{
		"Pending | init:  | a=waiting ok=waiting | PodScheduled,PodReadyToStartContainers,Initialized",
		"Running | init:  | a=running ok=running | PodScheduled,PodReadyToStartContainers,Initialized,Ready,ContainersReady",
		"Failed | init:  | a=2 ok=0 | PodScheduled,PodReadyToStartContainers,Initialized",
	})
	if steps[2].Delay != 500*ms {
		t.Errorf("end waits for the longest container: %v", steps[2].Delay)
	}
}

func TestNoAnnotationsAllSucceed(t *testing.T) {
	pod := newPod(nil, []map[string]any{ic("a")}, "main")
	steps, _ := run(t, pod)
	if n := len(steps); n != 5 || !strings.HasPrefix(steps[n-1].State, "Succeeded | init: a=0 | main=0") {
		t.Errorf("steps: %v", steps)
	}
	if steps[2].Delay != 100*ms {
		t.Errorf("default duration: %v", steps[2].Delay)
	}
}

func TestDeletedPodIsRemoved(t *testing.T) {
	pod := newPod(nil, []map[string]any{ic("a")}, "main")
	pod["metadata"].(map[string]any)["deletionTimestamp"] = "2026-01-01T00:00:30Z"
	steps, _ := run(t, pod)
	if len(steps) != 1 || steps[0].Stage != "gantry-pod-delete" || steps[0].State != "deleted" {
		t.Errorf("steps: %v", steps)
	}
}

func TestActiveDeadlineKillsRunningContainers(t *testing.T) {
	pod := newPod(map[string]any{"gantry.dev/durations-ms": "clone=500,build=5000"},
		[]map[string]any{ic("clone"), sidecar("db"), ic("build"), ic("test")}, "main")
	pod["spec"].(map[string]any)["activeDeadlineSeconds"] = 2
	steps, last := run(t, pod)
	check(t, steps, []string{
		"Pending | init: clone=waiting db=waiting build=waiting test=waiting | main=waiting | PodScheduled,PodReadyToStartContainers",
		"Pending | init: clone=running db=waiting build=waiting test=waiting | main=waiting | PodScheduled,PodReadyToStartContainers",
		"Pending | init: clone=0 db=waiting build=waiting test=waiting | main=waiting | PodScheduled,PodReadyToStartContainers",
		"Pending | init: clone=0 db=running build=waiting test=waiting | main=waiting | PodScheduled,PodReadyToStartContainers",
		"Pending | init: clone=0 db=running build=running test=waiting | main=waiting | PodScheduled,PodReadyToStartContainers",
		"Failed | init: clone=0 db=137 build=137 test=waiting | main=waiting | PodScheduled,PodReadyToStartContainers",
	})
	var total time.Duration
	for _, s := range steps {
		total += s.Delay
	}
	if total < 2*time.Second || total > 3*time.Second {
		t.Errorf("deadline reached after %v, want 2s..3s", total)
	}
	st := last["status"].(map[string]any)
	if st["reason"] != "DeadlineExceeded" || st["message"] == nil {
		t.Errorf("status: reason %v message %v", st["reason"], st["message"])
	}
}

func TestActiveDeadlineWhileRunning(t *testing.T) {
	pod := newPod(map[string]any{"gantry.dev/durations-ms": "main=60000"}, []map[string]any{ic("a")}, "main")
	pod["spec"].(map[string]any)["activeDeadlineSeconds"] = 3
	steps, last := run(t, pod)
	got := steps[len(steps)-1].State
	if got != "Failed | init: a=0 | main=137 | PodScheduled,PodReadyToStartContainers,Initialized" {
		t.Errorf("last state: %s (%v)", got, steps)
	}
	if last["status"].(map[string]any)["reason"] != "DeadlineExceeded" {
		t.Errorf("reason: %v", last["status"])
	}
	var total time.Duration
	for _, s := range steps {
		total += s.Delay
	}
	if total < 3*time.Second || total > 4*time.Second {
		t.Errorf("deadline reached after %v, want 3s..4s", total)
	}
}

func TestWaitingInitContainerHoldsThePod(t *testing.T) {
	pod := newPod(map[string]any{"gantry.dev/waiting": "step-1=ImagePullBackOff"},
		[]map[string]any{ic("clone"), ic("step-1"), ic("step-2")}, "main")
	steps, last := run(t, pod)
	if got := steps[len(steps)-1].State; got != "Pending | init: clone=0 step-1=waiting step-2=waiting | main=waiting | PodScheduled,PodReadyToStartContainers" {
		t.Errorf("last state: %s", got)
	}
	w := last["status"].(map[string]any)["initContainerStatuses"].([]any)[1].(map[string]any)["state"].(map[string]any)["waiting"].(map[string]any)
	if w["reason"] != "ImagePullBackOff" || w["message"] != `Back-off pulling image "img/step-1"` {
		t.Errorf("waiting: %v", w)
	}

	// With a deadline, the pod fails when it passes.
	pod = newPod(map[string]any{"gantry.dev/waiting": "step-1=ErrImagePull"},
		[]map[string]any{ic("clone"), ic("step-1")}, "main")
	pod["spec"].(map[string]any)["activeDeadlineSeconds"] = 5
	steps, last = run(t, pod)
	if got := steps[len(steps)-1].State; got != "Failed | init: clone=0 step-1=waiting | main=waiting | PodScheduled,PodReadyToStartContainers" {
		t.Errorf("last state: %s", got)
	}
	if last["status"].(map[string]any)["reason"] != "DeadlineExceeded" {
		t.Errorf("status: %v", last["status"])
	}
}
