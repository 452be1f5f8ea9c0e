// gantry-kwok-logs gives kwok's simulated containers their output, so that `pods/log` through
// the real API server returns lines (kwok serves a container's log from a CRI-format file named
// in a kwok `Logs` object; it cannot write files itself).
//
// For every pod it sees it creates DIR/<namespace>/<pod>/<container>.log (empty) for each init
// and regular container, and a namespaced kwok `Logs` object named like the pod (owned by the
// pod, so garbage collection removes it) that maps each container to its file. When a
// container is first seen running or terminated, the lines given for it in the pod annotation
//
//	gantry.dev/logs: '{"build": "line 1\nline 2", "test": "..."}'
//
// are appended to its file in CRI format ("<RFC3339Nano> stdout F <line>"), with strictly
// increasing timestamps; `gantry.dev/log-interval-ms: "50"` spaces them out in time (default 0:
// all at once). A name suffixed with "/stderr" ("build/stderr") writes to stderr instead.
// Files of deleted pods are removed.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

var logsGVR = schema.GroupVersionResource{Group: "kwok.x-k8s.io", Version: "v1alpha1", Resource: "logs"}

type writer struct {
	dir     string
	dyn     dynamic.Interface
	mu      sync.Mutex
	seen    map[string]bool // pod uid
	written map[string]bool // pod uid + "/" + container
	lastTS  map[string]time.Time
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of a user allowed to watch pods and create kwok Logs")
	dir := flag.String("dir", "", "directory for the log files")
	flag.Parse()
	if *kubeconfig == "" || *dir == "" {
		log.Fatal("usage: gantry-kwok-logs --kubeconfig FILE --dir DIR")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		log.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 200, 400
	cs := kubernetes.NewForConfigOrDie(cfg)
	w := &writer{dir: *dir, dyn: dynamic.NewForConfigOrDie(cfg), seen: map[string]bool{}, written: map[string]bool{}, lastTS: map[string]time.Time{}}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	factory := informers.NewSharedInformerFactory(cs, 0)
	inf := factory.Core().V1().Pods().Informer()
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { w.pod(ctx, o) },
		UpdateFunc: func(_, o any) { w.pod(ctx, o) },
		DeleteFunc: func(o any) {
			if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
				o = d.Obj
			}
			if p, ok := o.(*corev1.Pod); ok {
				w.mu.Lock()
				delete(w.seen, string(p.UID))
				w.mu.Unlock()
				_ = os.RemoveAll(filepath.Join(w.dir, p.Namespace, p.Name))
			}
		},
	})
	factory.Start(ctx.Done())
	log.Printf("gantry-kwok-logs: writing under %s", *dir)
	<-ctx.Done()
}

func (w *writer) podDir(p *corev1.Pod) string { return filepath.Join(w.dir, p.Namespace, p.Name) }

func (w *writer) pod(ctx context.Context, o any) {
	p, ok := o.(*corev1.Pod)
	if !ok || p.DeletionTimestamp != nil {
		return
	}
	uid := string(p.UID)
	w.mu.Lock()
	first := !w.seen[uid]
	w.seen[uid] = true
	w.mu.Unlock()
	if first {
		if err := w.register(ctx, p); err != nil {
			log.Printf("%s/%s: %v", p.Namespace, p.Name, err)
			w.mu.Lock()
			delete(w.seen, uid)
			w.mu.Unlock()
			return
		}
	}
	statuses := append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...)
	for _, s := range statuses {
		if s.State.Running == nil && s.State.Terminated == nil {
			continue
		}
		key := uid + "/" + s.Name
		w.mu.Lock()
		done := w.written[key]
		w.written[key] = true
		w.mu.Unlock()
		if !done {
			go w.write(p, s.Name)
		}
	}
}

// register creates the empty files and the kwok Logs object of a pod.
func (w *writer) register(ctx context.Context, p *corev1.Pod) error {
	if err := os.MkdirAll(w.podDir(p), 0o755); err != nil {
		return err
	}
	var logs []any
	var names []string
	for _, c := range p.Spec.InitContainers {
		names = append(names, c.Name)
	}
	for _, c := range p.Spec.Containers {
		names = append(names, c.Name)
	}
	for _, n := range names {
		f := filepath.Join(w.podDir(p), n+".log")
		fh, err := os.OpenFile(f, os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		_ = fh.Close()
		logs = append(logs, map[string]any{"containers": []any{n}, "logsFile": f, "follow": true})
	}
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "kwok.x-k8s.io/v1alpha1",
		"kind":       "Logs",
		"metadata": map[string]any{
			"name":      p.Name,
			"namespace": p.Namespace,
			"ownerReferences": []any{map[string]any{
				"apiVersion": "v1", "kind": "Pod", "name": p.Name, "uid": string(p.UID),
			}},
		},
		"spec": map[string]any{"logs": logs},
	}}
	_, err := w.dyn.Resource(logsGVR).Namespace(p.Namespace).Create(ctx, obj, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		// A pod re-created under the same name: point the object at this pod.
		cur, gerr := w.dyn.Resource(logsGVR).Namespace(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
		if gerr != nil {
			return gerr
		}
		obj.SetResourceVersion(cur.GetResourceVersion())
		_, err = w.dyn.Resource(logsGVR).Namespace(p.Namespace).Update(ctx, obj, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("create kwok Logs: %w", err)
	}
	return nil
}

// write appends a container's lines from the pod annotation to its file.
func (w *writer) write(p *corev1.Pod, container string) {
	var spec map[string]string
	if raw := p.Annotations["gantry.dev/logs"]; raw != "" {
		if err := json.Unmarshal([]byte(raw), &spec); err != nil {
			log.Printf("%s/%s: bad gantry.dev/logs annotation: %v", p.Namespace, p.Name, err)
			return
		}
	}
	interval, _ := strconv.Atoi(p.Annotations["gantry.dev/log-interval-ms"])
	type line struct{ stream, text string }
	var lines []line
	keys := make([]string, 0, len(spec))
	for k := range spec {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		stream := "stdout"
		name := k
		if strings.HasSuffix(k, "/stderr") {
			stream, name = "stderr", strings.TrimSuffix(k, "/stderr")
		}
		if name != container || spec[k] == "" {
			continue
		}
		for _, t := range strings.Split(strings.TrimSuffix(spec[k], "\n"), "\n") {
			lines = append(lines, line{stream, t})
		}
	}
	if len(lines) == 0 {
		return
	}
	f, err := os.OpenFile(filepath.Join(w.podDir(p), container+".log"), os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		log.Printf("%s/%s: %v", p.Namespace, p.Name, err)
		return
	}
	defer f.Close()
	key := string(p.UID) + "/" + container
	for i, l := range lines {
		if i > 0 && interval > 0 {
			time.Sleep(time.Duration(interval) * time.Millisecond)
		}
		w.mu.Lock()
		ts := time.Now().UTC()
		if last := w.lastTS[key]; !ts.After(last) {
			ts = last.Add(time.Microsecond)
		}
		w.lastTS[key] = ts
		w.mu.Unlock()
		if _, err := fmt.Fprintf(f, "%s %s F %s\n", ts.Format("2006-01-02T15:04:05.000000000Z07:00"), l.stream, l.text); err != nil {
			log.Printf("%s/%s: %v", p.Namespace, p.Name, err)
			return
		}
	}
}
