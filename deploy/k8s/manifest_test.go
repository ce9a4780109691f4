package k8s

// The manifests are built with kustomize in-process (no kubectl, no cluster)
// and every object is decoded strictly into its k8s.io/api type, then a table
// of checks runs on each build. TestChecksCatch breaks the built objects one
// way at a time and proves that the check meant to notice does.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	sigsyaml "sigs.k8s.io/yaml"

	natsserver "github.com/nats-io/nats-server/v2/server"

	"github.com/relay1c/relay/adapters"
	"github.com/relay1c/relay/config"
)

// Kustomization directories, relative to this package.
const (
	dirBase   = "base"
	dirNATS   = "nats"
	dirHQ     = "overlays/hq"
	dirOffice = "overlays/office"
)

var allDirs = []string{dirBase, dirNATS, dirHQ, dirOffice}

// relayImage is the repository of the relay's image.
const relayImage = "ghcr.io/relay1c/relay"

// object is one built resource: its JSON and the typed k8s.io/api value.
type object struct {
	Kind, Name string
	JSON       []byte
	Obj        any
}

// build is the output of one kustomization.
type build struct {
	Dir  string
	Objs []*object
}

// apiVersions are the kinds the manifests may contain, with their one
// accepted apiVersion.
var apiVersions = map[string]string{
	"Deployment":            "apps/v1",
	"StatefulSet":           "apps/v1",
	"Service":               "v1",
	"ConfigMap":             "v1",
	"PersistentVolumeClaim": "v1",
	"Namespace":             "v1",
	"PodDisruptionBudget":   "policy/v1",
	"NetworkPolicy":         "networking.k8s.io/v1",
}

func newTyped(kind string) (any, error) {
	switch kind {
	case "Deployment":
		return &appsv1.Deployment{}, nil
	case "StatefulSet":
		return &appsv1.StatefulSet{}, nil
	case "Service":
		return &corev1.Service{}, nil
	case "ConfigMap":
		return &corev1.ConfigMap{}, nil
	case "PersistentVolumeClaim":
		return &corev1.PersistentVolumeClaim{}, nil
	case "Namespace":
		return &corev1.Namespace{}, nil
	case "PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, nil
	case "NetworkPolicy":
		return &networkingv1.NetworkPolicy{}, nil
	case "Secret":
		return nil, errors.New("a Secret is part of the manifests: secrets are created with kubectl (base/secret.example.yaml), never shipped")
	}
	return nil, fmt.Errorf("kind %q is not one this test knows: add it to newTyped and apiVersions (and check it), or remove it", kind)
}

// decodeStrict decodes one object's JSON into its typed value: an unknown
// kind, an unknown field, a field spelled in the wrong case or a wrong
// apiVersion is an error.
func decodeStrict(kind string, data []byte) (any, error) {
	obj, err := newTyped(kind)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(obj); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("trailing data after the object")
	}
	var head struct {
		APIVersion string `json:"apiVersion"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return nil, err
	}
	if want := apiVersions[kind]; head.APIVersion != want {
		return nil, fmt.Errorf("apiVersion %q, want %q", head.APIVersion, want)
	}
	// encoding/json matches field names case-insensitively; the API server
	// does not. Every key of the input must come back from the typed value.
	back, err := json.Marshal(obj)
	if err != nil {
		return nil, err
	}
	var in, out any
	if err := json.Unmarshal(data, &in); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(back, &out); err != nil {
		return nil, err
	}
	if lost := lostKeys(in, out, ""); len(lost) > 0 {
		return nil, fmt.Errorf("fields not in the API type (wrong case?): %s", strings.Join(lost, ", "))
	}
	return obj, nil
}

// lostKeys lists the map keys of in that out lacks, by path.
func lostKeys(in, out any, at string) []string {
	var lost []string
	switch a := in.(type) {
	case map[string]any:
		b, _ := out.(map[string]any)
		for k, v := range a {
			if v == nil {
				continue
			}
			w, ok := b[k]
			if !ok {
				lost = append(lost, at+"."+k)
				continue
			}
			lost = append(lost, lostKeys(v, w, at+"."+k)...)
		}
	case []any:
		b, _ := out.([]any)
		for i, v := range a {
			if i < len(b) {
				lost = append(lost, lostKeys(v, b[i], fmt.Sprintf("%s[%d]", at, i))...)
			}
		}
	}
	sort.Strings(lost)
	return lost
}

func kustomize(dir string) (*build, error) {
	rm, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	b := &build{Dir: dir}
	var errs []error
	for _, r := range rm.Resources() {
		y, err := r.AsYAML()
		if err != nil {
			return nil, err
		}
		j, err := sigsyaml.YAMLToJSON(y)
		if err != nil {
			return nil, err
		}
		o := &object{Kind: r.GetKind(), Name: r.GetName(), JSON: j}
		if o.Obj, err = decodeStrict(o.Kind, j); err != nil {
			errs = append(errs, fmt.Errorf("%s %s/%s: %w", dir, o.Kind, o.Name, err))
			continue
		}
		b.Objs = append(b.Objs, o)
	}
	return b, errors.Join(errs...)
}

var builds = sync.OnceValue(func() map[string]any {
	out := map[string]any{}
	for _, d := range allDirs {
		b, err := kustomize(d)
		if err != nil {
			out[d] = err
		} else {
			out[d] = b
		}
	}
	return out
})

// built returns the build of dir, failing the test if it did not build.
func built(t *testing.T, dir string) *build {
	t.Helper()
	switch v := builds()[dir].(type) {
	case *build:
		return v.clone(t)
	case error:
		t.Fatal(v)
	}
	return nil
}

// clone decodes every object again, so a test may change it.
func (b *build) clone(t *testing.T) *build {
	c := &build{Dir: b.Dir}
	for _, o := range b.Objs {
		obj, err := decodeStrict(o.Kind, o.JSON)
		if err != nil {
			t.Fatal(err)
		}
		c.Objs = append(c.Objs, &object{Kind: o.Kind, Name: o.Name, JSON: o.JSON, Obj: obj})
	}
	return c
}

func TestBuild(t *testing.T) {
	for _, d := range allDirs {
		t.Run(d, func(t *testing.T) {
			b := built(t, d)
			if len(b.Objs) == 0 {
				t.Fatalf("%s builds to nothing", d)
			}
		})
	}
}

// ---- access to the built objects ----

func objects[T any](b *build) []T {
	var out []T
	for _, o := range b.Objs {
		if v, ok := o.Obj.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

// generated reports whether have is name or kustomize's name-hash of it.
func generated(have, name string) bool {
	if have == name {
		return true
	}
	rest, ok := strings.CutPrefix(have, name+"-")
	return ok && !strings.Contains(rest, "-")
}

func (b *build) configMap(name string) *corev1.ConfigMap {
	for _, cm := range objects[*corev1.ConfigMap](b) {
		if generated(cm.Name, name) {
			return cm
		}
	}
	return nil
}

// named is the object of type T called name, nil if there is none.
func named[T interface{ GetName() string }](b *build, name string) T {
	for _, o := range objects[T](b) {
		if o.GetName() == name {
			return o
		}
	}
	var none T
	return none
}

func (b *build) deployment(name string) *appsv1.Deployment {
	return named[*appsv1.Deployment](b, name)
}

func (b *build) statefulSet(name string) *appsv1.StatefulSet {
	return named[*appsv1.StatefulSet](b, name)
}

func (b *build) service(name string) *corev1.Service { return named[*corev1.Service](b, name) }

func (b *build) pvc(name string) *corev1.PersistentVolumeClaim {
	return named[*corev1.PersistentVolumeClaim](b, name)
}

func (b *build) pdb(name string) *policyv1.PodDisruptionBudget {
	return named[*policyv1.PodDisruptionBudget](b, name)
}

// workload is a Deployment or StatefulSet seen through its pod template.
type workload struct {
	ID       string // "Deployment relay"
	Replicas int32
	Labels   map[string]string
	Selector map[string]string
	Spec     *corev1.PodSpec
	Claims   []corev1.PersistentVolumeClaim // StatefulSet volumeClaimTemplates
	Deploy   *appsv1.Deployment
	Sts      *appsv1.StatefulSet
}

func replicas(p *int32) int32 {
	if p == nil {
		return 1
	}
	return *p
}

func (b *build) workloads() []*workload {
	var out []*workload
	for _, o := range b.Objs {
		switch v := o.Obj.(type) {
		case *appsv1.Deployment:
			out = append(out, &workload{ID: "Deployment " + v.Name, Replicas: replicas(v.Spec.Replicas), Labels: v.Spec.Template.Labels,
				Selector: selectorLabels(v.Spec.Selector), Spec: &v.Spec.Template.Spec, Deploy: v})
		case *appsv1.StatefulSet:
			out = append(out, &workload{ID: "StatefulSet " + v.Name, Replicas: replicas(v.Spec.Replicas), Labels: v.Spec.Template.Labels,
				Selector: selectorLabels(v.Spec.Selector), Spec: &v.Spec.Template.Spec, Claims: v.Spec.VolumeClaimTemplates, Sts: v})
		}
	}
	return out
}

func selectorLabels(s *metav1.LabelSelector) map[string]string {
	if s == nil {
		return nil
	}
	return s.MatchLabels
}

func containers(spec *corev1.PodSpec) []*corev1.Container {
	var out []*corev1.Container
	for i := range spec.InitContainers {
		out = append(out, &spec.InitContainers[i])
	}
	for i := range spec.Containers {
		out = append(out, &spec.Containers[i])
	}
	return out
}

// matches reports whether every selector label is among labels.
func matches(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func (b *build) selected(selector map[string]string) []*workload {
	var out []*workload
	for _, w := range b.workloads() {
		if matches(selector, w.Labels) {
			out = append(out, w)
		}
	}
	return out
}

// imageRepo strips the tag and digest from an image reference.
func imageRepo(image string) string {
	image, _, _ = strings.Cut(image, "@")
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		image = image[:i]
	}
	return image
}

// ---- files inside a pod ----

// file says where a path inside a container comes from.
type file struct {
	Source string // configMap, secret, emptyDir, persistentVolumeClaim, other
	Name   string // the ConfigMap, Secret or claim name
	Key    string // the key in the ConfigMap or Secret
	Mount  *corev1.VolumeMount
	Volume *corev1.Volume
}

// resolve finds the volume that holds path in container c.
func resolve(spec *corev1.PodSpec, c *corev1.Container, p string) (*file, error) {
	p = path.Clean(p)
	var best *corev1.VolumeMount
	for i := range c.VolumeMounts {
		m := &c.VolumeMounts[i]
		mp := path.Clean(m.MountPath)
		if p == mp || (m.SubPath == "" && strings.HasPrefix(p, mp+"/")) {
			if best == nil || len(mp) > len(path.Clean(best.MountPath)) {
				best = m
			}
		}
	}
	if best == nil {
		return nil, fmt.Errorf("%s is on no volume of container %s (the root filesystem is read-only and not ours)", p, c.Name)
	}
	rel := strings.TrimPrefix(strings.TrimPrefix(p, path.Clean(best.MountPath)), "/")
	if best.SubPath != "" {
		rel = best.SubPath
	}
	var vol *corev1.Volume
	for i := range spec.Volumes {
		if spec.Volumes[i].Name == best.Name {
			vol = &spec.Volumes[i]
		}
	}
	f := &file{Source: "other", Mount: best, Volume: vol}
	if vol == nil {
		// A StatefulSet's volumeClaimTemplates.
		f.Source, f.Name = "persistentVolumeClaim", best.Name
		return f, nil
	}
	pick := func(items []corev1.KeyToPath) (string, bool) {
		if len(items) == 0 {
			return rel, true
		}
		for _, it := range items {
			if it.Path == rel {
				return it.Key, true
			}
		}
		return "", false
	}
	switch v := vol.VolumeSource; {
	case v.ConfigMap != nil:
		key, ok := pick(v.ConfigMap.Items)
		if !ok {
			return nil, fmt.Errorf("%s: ConfigMap volume %s has no item %s", p, vol.Name, rel)
		}
		f.Source, f.Name, f.Key = "configMap", v.ConfigMap.Name, key
	case v.Secret != nil:
		key, ok := pick(v.Secret.Items)
		if !ok {
			return nil, fmt.Errorf("%s: Secret volume %s has no item %s", p, vol.Name, rel)
		}
		f.Source, f.Name, f.Key = "secret", v.Secret.SecretName, key
	case v.Projected != nil:
		for _, s := range v.Projected.Sources {
			switch {
			case s.ConfigMap != nil && len(s.ConfigMap.Items) > 0:
				if key, ok := pick(s.ConfigMap.Items); ok {
					f.Source, f.Name, f.Key = "configMap", s.ConfigMap.Name, key
					return f, nil
				}
			case s.Secret != nil && len(s.Secret.Items) > 0:
				if key, ok := pick(s.Secret.Items); ok {
					f.Source, f.Name, f.Key = "secret", s.Secret.Name, key
					return f, nil
				}
			}
		}
		return nil, fmt.Errorf("%s: no source of projected volume %s lists item %s (list items explicitly)", p, vol.Name, rel)
	case v.PersistentVolumeClaim != nil:
		f.Source, f.Name = "persistentVolumeClaim", v.PersistentVolumeClaim.ClaimName
	case v.EmptyDir != nil:
		f.Source = "emptyDir"
	}
	return f, nil
}

// writable reports whether path is on a writable scratch or persistent volume.
func writable(spec *corev1.PodSpec, c *corev1.Container, p string) (*file, error) {
	f, err := resolve(spec, c, p)
	if err != nil {
		return nil, err
	}
	if f.Source != "emptyDir" && f.Source != "persistentVolumeClaim" {
		return nil, fmt.Errorf("%s is on %s volume %s, not an emptyDir or a PVC", p, f.Source, f.Mount.Name)
	}
	if f.Mount.ReadOnly {
		return nil, fmt.Errorf("%s is on volume %s mounted read-only", p, f.Mount.Name)
	}
	return f, nil
}

// configArg returns the value of -c/--config in args.
func configArg(args []string) (string, bool) {
	for i, a := range args {
		switch {
		case (a == "-c" || a == "--config") && i+1 < len(args):
			return args[i+1], true
		case strings.HasPrefix(a, "--config="):
			return strings.TrimPrefix(a, "--config="), true
		case strings.HasPrefix(a, "-c="):
			return strings.TrimPrefix(a, "-c="), true
		}
	}
	return "", false
}

// ---- the relay and NATS as the build runs them ----

type relay struct {
	W   *workload
	C   *corev1.Container
	CM  *corev1.ConfigMap
	Cfg *config.Config
}

// relay finds the one relay Deployment, its routing.yaml (through its -c
// argument, the volume mounted there and the ConfigMap behind it) and
// parses it. A build without a relay returns nil, nil.
func (b *build) relay() (*relay, error) {
	var found []*relay
	for _, w := range b.workloads() {
		for _, c := range containers(w.Spec) {
			if imageRepo(c.Image) == relayImage {
				found = append(found, &relay{W: w, C: c})
			}
		}
	}
	switch len(found) {
	case 0:
		return nil, nil
	case 1:
	default:
		return nil, fmt.Errorf("%d relay containers; the checks expect one", len(found))
	}
	r := found[0]
	if r.W.Deploy == nil {
		return nil, fmt.Errorf("relay runs in %s, want a Deployment", r.W.ID)
	}
	p, ok := configArg(append(slices.Clone(r.C.Command), r.C.Args...))
	if !ok {
		return nil, fmt.Errorf("relay container args %q do not name routing.yaml with -c", r.C.Args)
	}
	if !path.IsAbs(p) {
		return nil, fmt.Errorf("relay -c %s is not an absolute path", p)
	}
	f, err := resolve(r.W.Spec, r.C, p)
	if err != nil {
		return nil, fmt.Errorf("relay -c %s: %w", p, err)
	}
	if f.Source != "configMap" {
		return nil, fmt.Errorf("relay -c %s comes from a %s volume, want the ConfigMap relay-config", p, f.Source)
	}
	if r.CM = b.configMap(f.Name); r.CM == nil || r.CM.Name != f.Name {
		return nil, fmt.Errorf("relay -c %s: ConfigMap %s is not in the build", p, f.Name)
	}
	data, ok := r.CM.Data[f.Key]
	if !ok {
		return nil, fmt.Errorf("relay -c %s: ConfigMap %s has no key %s", p, f.Name, f.Key)
	}
	if r.Cfg, err = config.Parse([]byte(data)); err != nil {
		return nil, fmt.Errorf("ConfigMap %s key %s: %w", f.Name, f.Key, err)
	}
	return r, nil
}

type natsCluster struct {
	W    *workload
	C    *corev1.Container
	CM   *corev1.ConfigMap
	Conf string
	// Includes are the files nats.conf includes, as the pod mounts them.
	Includes map[string]*file
	Opts     *natsserver.Options
}

var (
	natsVar     = regexp.MustCompile(`\$([A-Za-z_][A-Za-z0-9_]*)`)
	natsInclude = regexp.MustCompile(`(?m)^[ \t]*include[ \t]+["']?([^"'\s;]+)["']?`)
)

// nats finds the NATS StatefulSet and parses its nats.conf with the
// nats-server's own parser; every $VARIABLE must be an env var of the
// container (it is replaced by a stand-in value for parsing), and every
// included file must be mounted beside it from a Secret: its content is
// then a stand-in too, an operator-mode auth.conf made by testTrust, as
// `nsc generate config --mem-resolver` makes the real one.
func (b *build) nats() (*natsCluster, error) {
	var n *natsCluster
	for _, w := range b.workloads() {
		for _, c := range containers(w.Spec) {
			if imageRepo(c.Image) == "nats" {
				if n != nil {
					return nil, errors.New("more than one nats container")
				}
				n = &natsCluster{W: w, C: c}
			}
		}
	}
	if n == nil {
		return nil, nil
	}
	if n.W.Sts == nil {
		return nil, fmt.Errorf("nats runs in %s, want a StatefulSet", n.W.ID)
	}
	args := append(slices.Clone(n.C.Command), n.C.Args...)
	p := ""
	for i, a := range args {
		if (a == "--config" || a == "-c") && i+1 < len(args) {
			p = args[i+1]
		}
	}
	if p == "" {
		return nil, fmt.Errorf("nats container command %q names no --config", args)
	}
	f, err := resolve(n.W.Spec, n.C, p)
	if err != nil {
		return nil, fmt.Errorf("nats --config: %w", err)
	}
	if f.Source != "configMap" {
		return nil, fmt.Errorf("nats --config %s comes from a %s volume, want a ConfigMap", p, f.Source)
	}
	if n.CM = b.configMap(f.Name); n.CM == nil || n.CM.Name != f.Name {
		return nil, fmt.Errorf("nats --config %s: ConfigMap %s is not in the build", p, f.Name)
	}
	if n.Conf = n.CM.Data[f.Key]; n.Conf == "" {
		return nil, fmt.Errorf("nats --config %s: ConfigMap %s has no key %s", p, f.Name, f.Key)
	}
	env := map[string]bool{}
	for _, e := range n.C.Env {
		env[e.Name] = true
	}
	lines := strings.Split(n.Conf, "\n")
	for i, l := range lines {
		code, comment := l, ""
		if j := strings.IndexAny(l, "#"); j >= 0 {
			code, comment = l[:j], l[j:]
		} else if j := strings.Index(l, "//"); j >= 0 && !strings.Contains(l[:j], "://") {
			code, comment = l[:j], l[j:]
		}
		lines[i] = natsVar.ReplaceAllStringFunc(code, func(v string) string {
			if !env[v[1:]] {
				err = errors.Join(err, fmt.Errorf("nats.conf uses %s, but the nats container has no env var %s", v, v[1:]))
			}
			return "stand-in-" + strings.ToLower(v[1:])
		}) + comment
	}
	conf := strings.Join(lines, "\n")
	if err != nil {
		return nil, err
	}
	// nats-server reads an include relative to the including file.
	dir, err := os.MkdirTemp("", "nats-conf-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	n.Includes = map[string]*file{}
	for _, m := range natsInclude.FindAllStringSubmatch(stripComments(conf), -1) {
		inc := m[1]
		if path.IsAbs(inc) || strings.HasPrefix(path.Clean(inc), "..") {
			return nil, fmt.Errorf("nats.conf includes %s: want a file beside nats.conf", inc)
		}
		in := path.Join(path.Dir(p), inc)
		f, err := resolve(n.W.Spec, n.C, in)
		if err != nil {
			return nil, fmt.Errorf("nats.conf includes %s: %w", inc, err)
		}
		if f.Source != "secret" {
			return nil, fmt.Errorf("nats.conf includes %s from a %s volume, want a Secret (the deployment's own operator and accounts)", in, f.Source)
		}
		n.Includes[inc] = f
		tr, err := testTrust()
		if err != nil {
			return nil, err
		}
		target := filepath.Join(dir, filepath.FromSlash(path.Clean(inc)))
		if err := os.MkdirAll(filepath.Dir(target), 0o700); err != nil {
			return nil, err
		}
		if err := os.WriteFile(target, []byte(tr.AuthConf), 0o600); err != nil {
			return nil, err
		}
	}
	confPath := filepath.Join(dir, path.Base(p))
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	n.Opts = &natsserver.Options{}
	if err := n.Opts.ProcessConfigFile(confPath); err != nil {
		return nil, fmt.Errorf("nats.conf in ConfigMap %s: %w", n.CM.Name, err)
	}
	return n, nil
}

// stripComments blanks the # and // comments of a nats.conf.
func stripComments(conf string) string {
	lines := strings.Split(conf, "\n")
	for i, l := range lines {
		if j := strings.IndexAny(l, "#"); j >= 0 {
			l = l[:j]
		}
		if j := strings.Index(l, "//"); j >= 0 && (j == 0 || l[j-1] != ':') {
			l = l[:j]
		}
		lines[i] = l
	}
	return strings.Join(lines, "\n")
}

// containerPort resolves a probe's or Service's port against the
// container(s): a name must be a named port.
func containerPort(cs []*corev1.Container, p intstr.IntOrString) (int32, bool) {
	if p.Type == intstr.Int {
		return p.IntVal, p.IntVal > 0
	}
	for _, c := range cs {
		for _, cp := range c.Ports {
			if cp.Name == p.StrVal {
				return cp.ContainerPort, true
			}
		}
	}
	return 0, false
}

// httpProbe checks one probe: an HTTP GET of want (path without query) on port.
func httpProbe(c *corev1.Container, kind string, pr *corev1.Probe, wantPath string, wantPort int32) []string {
	if pr == nil {
		return []string{fmt.Sprintf("container %s has no %s probe (want GET %s on port %d)", c.Name, kind, wantPath, wantPort)}
	}
	if pr.HTTPGet == nil {
		return []string{fmt.Sprintf("container %s: %s probe is not an httpGet (want GET %s)", c.Name, kind, wantPath)}
	}
	var out []string
	if got, _, _ := strings.Cut(pr.HTTPGet.Path, "?"); got != wantPath {
		out = append(out, fmt.Sprintf("container %s: %s probe GETs %s, want %s", c.Name, kind, pr.HTTPGet.Path, wantPath))
	}
	if port, ok := containerPort([]*corev1.Container{c}, pr.HTTPGet.Port); !ok || port != wantPort {
		out = append(out, fmt.Sprintf("container %s: %s probe port %s is not container port %d", c.Name, kind, pr.HTTPGet.Port.String(), wantPort))
	}
	return out
}

// ---- the checks ----

// check is one assertion on a build; it returns its problems.
type check struct {
	name string
	// dirs the check applies to; nil means every build.
	dirs []string
	fn   func(b *build) []string
}

var checks = []check{
	{"relay probes", nil, checkRelayProbes},
	{"resources", nil, checkResources},
	{"security context", nil, checkSecurity},
	{"image tags", nil, checkImages},
	{"no secrets in ConfigMaps", nil, checkConfigMapSecrets},
	{"routing.yaml valid", nil, checkRouting},
	{"secret env vars", nil, checkSecretEnv},
	{"references", nil, checkReferences},
	{"selectors", nil, checkSelectors},
	{"disruption budgets", nil, checkPDBs},
	{"embedded NATS store", nil, checkEmbeddedStore},
	{"nats cluster", nil, checkNATS},
	{"has relay", []string{dirBase, dirHQ, dirOffice}, checkHasRelay},
	{"has nats", []string{dirNATS, dirHQ}, checkHasNATS},
	{"hq", []string{dirHQ}, checkHQ},
	{"office", []string{dirOffice}, checkOffice},
}

func (c check) applies(dir string) bool { return c.dirs == nil || slices.Contains(c.dirs, dir) }

func TestManifests(t *testing.T) {
	for _, d := range allDirs {
		t.Run(d, func(t *testing.T) {
			b := built(t, d)
			for _, c := range checks {
				if !c.applies(d) {
					continue
				}
				t.Run(c.name, func(t *testing.T) {
					for _, p := range c.fn(b) {
						t.Errorf("%s: %s", d, p)
					}
				})
			}
		})
	}
}

func checkHasRelay(b *build) []string {
	r, err := b.relay()
	if err != nil {
		return []string{err.Error()}
	}
	if r == nil {
		return []string{"no Deployment runs " + relayImage}
	}
	return nil
}

func checkHasNATS(b *build) []string {
	n, err := b.nats()
	if err != nil {
		return []string{err.Error()}
	}
	if n == nil {
		return []string{"no StatefulSet runs the nats image"}
	}
	return nil
}

func checkRelayProbes(b *build) []string {
	r, err := b.relay()
	if r == nil || err != nil {
		return nil // reported by "has relay" / "routing.yaml valid"
	}
	port, err := listenPort(r.Cfg)
	if err != nil {
		return []string{err.Error()}
	}
	out := httpProbe(r.C, "liveness", r.C.LivenessProbe, "/healthz", port)
	out = append(out, httpProbe(r.C, "readiness", r.C.ReadinessProbe, "/readyz", port)...)
	// /healthz answers only after bus.Open: without a startup probe that
	// waits for it, liveness would restart a relay still opening NATS.
	out = append(out, httpProbe(r.C, "startup", r.C.StartupProbe, "/healthz", port)...)
	if p := r.C.StartupProbe; p != nil {
		if got := probeBudget(p); got < relayStartup {
			out = append(out, fmt.Sprintf("container %s: startup probe allows %s, the relay may take %s before /healthz answers", r.C.Name, got, relayStartup))
		}
	}
	return out
}

// relayStartup is how long `relay run` may legitimately take before it
// serves /healthz: daemon.Run starts the API only after daemon.Start
// returned, and Start's bus.Open waits up to 30 s for the first connection
// to an external NATS or for the embedded server, then retries provisioning
// the streams for up to 2 min (~30 s measured for two relays on a new
// cluster, which is what overlays/hq starts).
const relayStartup = 30*time.Second + 2*time.Minute

// probeBudget is how long a probe lets a container go without an answer
// before it acts: initialDelaySeconds + periodSeconds × failureThreshold.
func probeBudget(p *corev1.Probe) time.Duration {
	period, fail := p.PeriodSeconds, p.FailureThreshold
	if period == 0 {
		period = 10
	}
	if fail == 0 {
		fail = 3
	}
	return time.Duration(p.InitialDelaySeconds+period*fail) * time.Second
}

func listenPort(cfg *config.Config) (int32, error) {
	_, p, err := net.SplitHostPort(cfg.Relay.Listen)
	if err != nil {
		return 0, fmt.Errorf("relay.listen %q: %w", cfg.Relay.Listen, err)
	}
	n, err := strconv.ParseInt(p, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("relay.listen %q: port: %w", cfg.Relay.Listen, err)
	}
	return int32(n), nil
}

func checkResources(b *build) []string {
	var out []string
	for _, w := range b.workloads() {
		for _, c := range containers(w.Spec) {
			for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
				req, hasReq := c.Resources.Requests[name]
				lim, hasLim := c.Resources.Limits[name]
				if !hasReq || req.IsZero() {
					out = append(out, fmt.Sprintf("%s container %s: no %s request", w.ID, c.Name, name))
				}
				if !hasLim || lim.IsZero() {
					out = append(out, fmt.Sprintf("%s container %s: no %s limit", w.ID, c.Name, name))
				}
				if hasReq && hasLim && req.Cmp(lim) > 0 {
					out = append(out, fmt.Sprintf("%s container %s: %s request %s above its limit %s", w.ID, c.Name, name, req.String(), lim.String()))
				}
			}
		}
	}
	return out
}

func checkSecurity(b *build) []string {
	var out []string
	for _, w := range b.workloads() {
		pod := w.Spec.SecurityContext
		if pod == nil {
			pod = &corev1.PodSecurityContext{}
		}
		for _, c := range containers(w.Spec) {
			sc := c.SecurityContext
			if sc == nil {
				sc = &corev1.SecurityContext{}
			}
			bad := func(format string, a ...any) {
				out = append(out, fmt.Sprintf("%s container %s: ", w.ID, c.Name)+fmt.Sprintf(format, a...))
			}
			nonRoot := pod.RunAsNonRoot
			if sc.RunAsNonRoot != nil {
				nonRoot = sc.RunAsNonRoot
			}
			if nonRoot == nil || !*nonRoot {
				bad("runAsNonRoot is not true (pod or container)")
			}
			uid := pod.RunAsUser
			if sc.RunAsUser != nil {
				uid = sc.RunAsUser
			}
			switch {
			case uid == nil:
				bad("no runAsUser: set the uid explicitly (an image without USER runs as root and fails runAsNonRoot)")
			case *uid == 0:
				bad("runAsUser is 0 (root)")
			}
			if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
				bad("readOnlyRootFilesystem is not true")
			}
			if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				bad("allowPrivilegeEscalation is not false")
			}
			if sc.Privileged != nil && *sc.Privileged {
				bad("privileged")
			}
			if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
				bad("capabilities do not drop ALL")
			} else if len(sc.Capabilities.Add) > 0 {
				bad("capabilities add %v", sc.Capabilities.Add)
			}
			sp := pod.SeccompProfile
			if sc.SeccompProfile != nil {
				sp = sc.SeccompProfile
			}
			if sp == nil || (sp.Type != corev1.SeccompProfileTypeRuntimeDefault && sp.Type != corev1.SeccompProfileTypeLocalhost) {
				bad("seccompProfile is not RuntimeDefault (pod or container)")
			}
		}
	}
	return out
}

func checkImages(b *build) []string {
	var out []string
	for _, w := range b.workloads() {
		for _, c := range containers(w.Spec) {
			img := c.Image
			if strings.Contains(img, "@sha256:") {
				continue
			}
			tag := ""
			if i := strings.LastIndex(img, ":"); i > strings.LastIndex(img, "/") {
				tag = img[i+1:]
			}
			switch {
			case tag == "":
				out = append(out, fmt.Sprintf("%s container %s: image %q has no tag (pin a version)", w.ID, c.Name, img))
			case strings.EqualFold(tag, "latest"):
				out = append(out, fmt.Sprintf("%s container %s: image %q is tagged latest (pin a version)", w.ID, c.Name, img))
			}
		}
	}
	return out
}

var (
	// secretName is a key that would hold a secret itself; *_env (naming a
	// variable) and *_file (naming a file) keys are references, not secrets.
	secretName = regexp.MustCompile(`(?i)(pass(word|wd)?|token|secret|api[_-]?key|private[_-]?key|credentials?)$`)
	// secretLine is such a key with a literal value in a non-YAML config
	// (nats.conf); a $VARIABLE reference is fine.
	secretLine  = regexp.MustCompile(`(?im)(?:^|[\s{,;])"?([A-Za-z0-9_-]*(pass(word|wd)?|token|secret|api[_-]?key|credentials?))"?\s*[:=]\s*"?([^\s"$#][^\s"#]*)`)
	urlPassword = regexp.MustCompile(`[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@`)
	secretBlob  = regexp.MustCompile(`-----BEGIN [A-Z ]*(PRIVATE KEY|NATS USER JWT|USER NKEY SEED)-----|\bS[UAONC][A-Z2-7]{56}\b`)
)

func checkConfigMapSecrets(b *build) []string {
	var out []string
	for _, cm := range objects[*corev1.ConfigMap](b) {
		for key, val := range cm.Data {
			at := fmt.Sprintf("ConfigMap %s key %s", cm.Name, key)
			if secretName.MatchString(strings.TrimSuffix(key, path.Ext(key))) || slices.Contains([]string{".creds", ".key", ".nk", ".jwt"}, path.Ext(key)) {
				out = append(out, at+": the key's name says it holds a secret")
			}
			if m := urlPassword.FindString(val); m != "" {
				out = append(out, fmt.Sprintf("%s: a URL with a password: %s...", at, m))
			}
			if secretBlob.MatchString(val) {
				out = append(out, at+": holds a private key, NATS JWT or nkey seed")
			}
			var doc yaml.Node
			if err := yaml.Unmarshal([]byte(val), &doc); err == nil && len(doc.Content) == 1 && doc.Content[0].Kind == yaml.MappingNode {
				out = append(out, yamlSecrets(doc.Content[0], at+":")...)
				continue
			}
			for _, m := range secretLine.FindAllStringSubmatch(val, -1) {
				if !strings.HasSuffix(m[1], "_env") && !strings.HasSuffix(m[1], "_file") {
					out = append(out, fmt.Sprintf("%s: %s has a literal value", at, m[1]))
				}
			}
		}
		for key := range cm.BinaryData {
			out = append(out, fmt.Sprintf("ConfigMap %s: binary key %s cannot be checked for secrets", cm.Name, key))
		}
	}
	return out
}

// yamlSecrets walks a YAML document for secret-named keys with literal values.
func yamlSecrets(n *yaml.Node, at string) []string {
	var out []string
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := at + "." + k.Value
			if strings.HasSuffix(at, ":") {
				p = at + " " + k.Value
			}
			if secretName.MatchString(k.Value) && v.Kind == yaml.ScalarNode && v.Value != "" && v.Tag != "!!null" {
				out = append(out, fmt.Sprintf("%s has a literal value (use a *_env key naming a variable from a Secret)", p))
			}
			out = append(out, yamlSecrets(v, p)...)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			out = append(out, yamlSecrets(c, fmt.Sprintf("%s[%d]", at, i))...)
		}
	}
	return out
}

func checkRouting(b *build) []string {
	r, err := b.relay()
	if err != nil {
		return []string{err.Error()}
	}
	if r == nil {
		return nil
	}
	cfg := r.Cfg
	var out []string
	// As `relay validate` does it.
	for _, p := range cfg.Problems(adapters.New(cfg)) {
		out = append(out, "routing.yaml: "+p)
	}
	host, _, _ := net.SplitHostPort(cfg.Relay.Listen)
	if host != "0.0.0.0" && host != "" && host != "::" {
		out = append(out, fmt.Sprintf("relay.listen %s: the kubelet's probes and the Service cannot reach it; listen on 0.0.0.0", cfg.Relay.Listen))
	}
	if port, err := listenPort(cfg); err == nil {
		if _, ok := containerPort([]*corev1.Container{r.C}, intstr.FromString("http")); !ok {
			out = append(out, "relay container has no port named http")
		} else if p, _ := containerPort([]*corev1.Container{r.C}, intstr.FromString("http")); p != port {
			out = append(out, fmt.Sprintf("relay container port http is %d, relay.listen is %s", p, cfg.Relay.Listen))
		}
	}
	if !path.IsAbs(cfg.Relay.DataDir) {
		out = append(out, fmt.Sprintf("relay.data_dir %s is relative; use an absolute path on the data volume", cfg.Relay.DataDir))
	} else if _, err := writable(r.W.Spec, r.C, cfg.Relay.DataDir); err != nil {
		out = append(out, "relay.data_dir: "+err.Error())
	}
	// Files the relay reads must be mounted from a ConfigMap or Secret.
	files := map[string]string{"nats.creds_file": cfg.NATS.CredsFile}
	tlsFiles := func(at string, t *config.TLS) {
		if t != nil {
			files[at+".ca_file"], files[at+".cert_file"], files[at+".key_file"] = t.CAFile, t.CertFile, t.KeyFile
		}
	}
	tlsFiles("nats.tls", cfg.NATS.TLS)
	if l := cfg.NATS.Leaf; l != nil {
		files["nats.leaf.creds_file"] = l.CredsFile
		tlsFiles("nats.leaf.tls", l.TLS)
	}
	// And the endpoints' own files (ftp/http/smtp/imap ca_file, ...) of the
	// nodes this relay serves: it builds adapters only for those.
	for _, name := range cfg.NodeNames() {
		n := cfg.Nodes[name]
		if n == nil || !cfg.Serves(n) {
			continue
		}
		for role, e := range map[string]*config.Endpoint{"pickup": n.Pickup, "deliver": n.Deliver} {
			if e != nil {
				fileKeys(&e.Options, "nodes."+name+"."+role+"."+e.Kind, files)
			}
		}
	}
	for _, at := range slices.Sorted(maps.Keys(files)) {
		p := files[at]
		if p == "" {
			continue
		}
		f, err := resolve(r.W.Spec, r.C, p)
		switch {
		case !path.IsAbs(p):
			out = append(out, fmt.Sprintf("%s %s is relative; name the file's absolute path on its volume", at, p))
		case err != nil:
			out = append(out, fmt.Sprintf("%s %s: %v", at, p, err))
		case f.Source != "secret" && f.Source != "configMap":
			out = append(out, fmt.Sprintf("%s %s is on a %s volume, want a Secret", at, p, f.Source))
		}
	}
	// Folders of dir endpoints this relay serves must be writable volumes.
	for _, name := range cfg.NodeNames() {
		n := cfg.Nodes[name]
		if n == nil || !cfg.Serves(n) {
			continue
		}
		for role, e := range map[string]*config.Endpoint{"pickup": n.Pickup, "deliver": n.Deliver} {
			if e == nil || e.Kind != "dir" {
				continue
			}
			dir := e.Options.Value
			if e.Options.Kind == yaml.MappingNode {
				var o struct {
					Path string `yaml:"path"`
				}
				_ = e.Options.Decode(&o)
				dir = o.Path
			}
			if _, err := writable(r.W.Spec, r.C, dir); err != nil {
				out = append(out, fmt.Sprintf("nodes.%s.%s.dir: %v", name, role, err))
			}
		}
	}
	sort.Strings(out)
	return out
}

// neededEnv lists the variables the relay reads: relay.api_token_env,
// nats.password_env and nats.token_env (bus.Open refuses to start when
// they are unset), every node's api_token_env (the API authenticates any
// node's pushes) and zip_password_env (config.ZipPasswords: a pickup tries
// the sender's and the addressee's archive password, whichever relay serves
// them), and the *_env options of the endpoints of the nodes this relay
// serves (it builds adapters only for those).
func neededEnv(cfg *config.Config) map[string]string {
	need := map[string]string{}
	if cfg.Relay.APITokenEnv != "" {
		need[cfg.Relay.APITokenEnv] = "relay.api_token_env"
	}
	if cfg.NATS.PasswordEnv != "" {
		need[cfg.NATS.PasswordEnv] = "nats.password_env"
	}
	if cfg.NATS.TokenEnv != "" {
		need[cfg.NATS.TokenEnv] = "nats.token_env"
	}
	for _, name := range cfg.NodeNames() {
		n := cfg.Nodes[name]
		if n == nil {
			continue
		}
		if n.APITokenEnv != "" {
			need[n.APITokenEnv] = "nodes." + name + ".api_token_env"
		}
		if n.ZipPasswordEnv != "" {
			need[n.ZipPasswordEnv] = "nodes." + name + ".zip_password_env"
		}
		if !cfg.Serves(n) {
			continue
		}
		for role, e := range map[string]*config.Endpoint{"pickup": n.Pickup, "deliver": n.Deliver} {
			if e != nil {
				envKeys(&e.Options, "nodes."+name+"."+role+"."+e.Kind, need)
			}
		}
	}
	return need
}

// fileKeys collects the *_file options (files the adapter reads) under n.
func fileKeys(n *yaml.Node, at string, files map[string]string) {
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if strings.HasSuffix(k.Value, "_file") && v.Kind == yaml.ScalarNode && v.Value != "" {
				files[at+"."+k.Value] = v.Value
			}
			fileKeys(v, at+"."+k.Value, files)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			fileKeys(c, fmt.Sprintf("%s[%d]", at, i), files)
		}
	}
}

func envKeys(n *yaml.Node, at string, need map[string]string) {
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if strings.HasSuffix(k.Value, "_env") && v.Kind == yaml.ScalarNode && v.Value != "" {
				need[v.Value] = at + "." + k.Value
			}
			envKeys(v, at+"."+k.Value, need)
		}
	case yaml.SequenceNode:
		for _, c := range n.Content {
			envKeys(c, at, need)
		}
	}
}

func checkSecretEnv(b *build) []string {
	r, err := b.relay()
	if r == nil || err != nil {
		return nil
	}
	need := neededEnv(r.Cfg)
	env := map[string]*corev1.EnvVar{}
	for i := range r.C.Env {
		env[r.C.Env[i].Name] = &r.C.Env[i]
	}
	var out []string
	for _, v := range slices.Sorted(maps.Keys(need)) {
		e := env[v]
		switch {
		case e == nil:
			out = append(out, fmt.Sprintf("routing.yaml %s names %s, but the relay container has no env var %s (add it with a secretKeyRef to relay-secrets)", need[v], v, v))
		case e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil:
			out = append(out, fmt.Sprintf("env var %s (%s) is not taken from a Secret with secretKeyRef", v, need[v]))
		case e.ValueFrom.SecretKeyRef.Name != "relay-secrets":
			out = append(out, fmt.Sprintf("env var %s comes from Secret %s, want relay-secrets", v, e.ValueFrom.SecretKeyRef.Name))
		case e.ValueFrom.SecretKeyRef.Optional != nil && *e.ValueFrom.SecretKeyRef.Optional:
			out = append(out, fmt.Sprintf("env var %s is optional: a missing secret would start the relay without it", v))
		}
	}
	for _, e := range r.C.Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && need[e.Name] == "" {
			out = append(out, fmt.Sprintf("env var %s comes from a Secret, but this relay never reads it (no *_env of relay %s names it): leave it out", e.Name, r.Cfg.Relay.ID))
		}
	}
	for _, ef := range r.C.EnvFrom {
		out = append(out, fmt.Sprintf("envFrom %+v: list every variable explicitly, so this test can check it", ef))
	}
	return out
}

func checkReferences(b *build) []string {
	var out []string
	for _, w := range b.workloads() {
		vols := map[string]bool{}
		for _, c := range w.Claims {
			vols[c.Name] = true
		}
		cm := func(name, at string) {
			if c := b.configMap(name); c == nil || c.Name != name {
				out = append(out, fmt.Sprintf("%s %s: ConfigMap %s is not in the build (or was not renamed to its generated name)", w.ID, at, name))
			}
		}
		for _, v := range w.Spec.Volumes {
			vols[v.Name] = true
			at := "volume " + v.Name
			switch {
			case v.ConfigMap != nil:
				cm(v.ConfigMap.Name, at)
			case v.Projected != nil:
				for _, s := range v.Projected.Sources {
					if s.ConfigMap != nil {
						cm(s.ConfigMap.Name, at)
					}
				}
			case v.PersistentVolumeClaim != nil:
				if b.pvc(v.PersistentVolumeClaim.ClaimName) == nil {
					out = append(out, fmt.Sprintf("%s %s: PersistentVolumeClaim %s is not in the build", w.ID, at, v.PersistentVolumeClaim.ClaimName))
				}
			}
		}
		for _, c := range containers(w.Spec) {
			for _, m := range c.VolumeMounts {
				if !vols[m.Name] {
					out = append(out, fmt.Sprintf("%s container %s mounts volume %s, which does not exist", w.ID, c.Name, m.Name))
				}
			}
		}
	}
	return out
}

func checkSelectors(b *build) []string {
	var out []string
	for _, w := range b.workloads() {
		if !matches(w.Selector, w.Labels) {
			out = append(out, fmt.Sprintf("%s: selector %v does not match its pod labels %v", w.ID, w.Selector, w.Labels))
		}
	}
	for _, s := range objects[*corev1.Service](b) {
		ws := b.selected(s.Spec.Selector)
		if len(ws) == 0 {
			out = append(out, fmt.Sprintf("Service %s: selector %v selects no pods", s.Name, s.Spec.Selector))
			continue
		}
		for _, p := range s.Spec.Ports {
			for _, w := range ws {
				if _, ok := containerPort(containers(w.Spec), p.TargetPort); !ok && p.TargetPort.Type == intstr.String {
					out = append(out, fmt.Sprintf("Service %s port %s: %s has no container port named %s", s.Name, p.Name, w.ID, p.TargetPort.StrVal))
				}
			}
		}
	}
	for _, p := range objects[*policyv1.PodDisruptionBudget](b) {
		if len(b.selected(selectorLabels(p.Spec.Selector))) == 0 {
			out = append(out, fmt.Sprintf("PodDisruptionBudget %s selects no pods", p.Name))
		}
	}
	for _, np := range objects[*networkingv1.NetworkPolicy](b) {
		if len(b.selected(np.Spec.PodSelector.MatchLabels)) == 0 {
			out = append(out, fmt.Sprintf("NetworkPolicy %s selects no pods", np.Name))
		}
	}
	// The relay's API port must be open in its NetworkPolicy.
	if r, err := b.relay(); err == nil && r != nil {
		if port, err := listenPort(r.Cfg); err == nil && !ingressAllows(b, r.W.Labels, port) {
			out = append(out, fmt.Sprintf("no NetworkPolicy lets traffic in to the relay's port %d", port))
		}
	}
	return out
}

func ingressAllows(b *build, labels map[string]string, port int32) bool {
	for _, np := range objects[*networkingv1.NetworkPolicy](b) {
		if !matches(np.Spec.PodSelector.MatchLabels, labels) {
			continue
		}
		for _, in := range np.Spec.Ingress {
			for _, p := range in.Ports {
				if p.Port != nil && p.Port.IntValue() == int(port) {
					return true
				}
			}
		}
	}
	return false
}

func checkPDBs(b *build) []string {
	var out []string
	for _, p := range objects[*policyv1.PodDisruptionBudget](b) {
		for _, w := range b.selected(selectorLabels(p.Spec.Selector)) {
			switch {
			case p.Spec.MinAvailable != nil && p.Spec.MaxUnavailable != nil:
				out = append(out, fmt.Sprintf("PodDisruptionBudget %s sets both minAvailable and maxUnavailable", p.Name))
			case p.Spec.MinAvailable != nil && p.Spec.MinAvailable.Type == intstr.Int && p.Spec.MinAvailable.IntVal >= w.Replicas:
				out = append(out, fmt.Sprintf("PodDisruptionBudget %s: minAvailable %d with %d replica(s) of %s blocks every node drain", p.Name, p.Spec.MinAvailable.IntVal, w.Replicas, w.ID))
			case p.Spec.MaxUnavailable != nil && p.Spec.MaxUnavailable.Type == intstr.Int && p.Spec.MaxUnavailable.IntVal < 1:
				out = append(out, fmt.Sprintf("PodDisruptionBudget %s: maxUnavailable 0 blocks every node drain", p.Name))
			case p.Spec.MinAvailable == nil && p.Spec.MaxUnavailable == nil:
				out = append(out, fmt.Sprintf("PodDisruptionBudget %s sets neither minAvailable nor maxUnavailable", p.Name))
			}
		}
	}
	return out
}

// checkEmbeddedStore: a relay with the embedded NATS server (no nats.url)
// owns its JetStream store under data_dir: it must be on a PVC, and one pod
// only, never two at once.
func checkEmbeddedStore(b *build) []string {
	r, err := b.relay()
	if r == nil || err != nil || r.Cfg.NATS.URL != "" {
		return nil
	}
	var out []string
	if f, err := writable(r.W.Spec, r.C, r.Cfg.Relay.DataDir); err == nil && f.Source != "persistentVolumeClaim" {
		out = append(out, fmt.Sprintf("embedded NATS: relay.data_dir %s (its JetStream store) is on a %s, want a PersistentVolumeClaim", r.Cfg.Relay.DataDir, f.Source))
	}
	if r.W.Replicas != 1 {
		out = append(out, fmt.Sprintf("embedded NATS: %d replicas, want 1 (each would have its own store)", r.W.Replicas))
	}
	if r.W.Deploy.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		out = append(out, fmt.Sprintf("embedded NATS: strategy %q, want Recreate (two pods must never share the store)", r.W.Deploy.Spec.Strategy.Type))
	} else if r.W.Deploy.Spec.Strategy.RollingUpdate != nil {
		out = append(out, "strategy Recreate with rollingUpdate set (the API server refuses it)")
	}
	return out
}

func checkNATS(b *build) []string {
	n, err := b.nats()
	if err != nil {
		return []string{err.Error()}
	}
	if n == nil {
		return nil
	}
	o, sts := n.Opts, n.W.Sts
	var out []string
	bad := func(format string, a ...any) { out = append(out, fmt.Sprintf(format, a...)) }
	if !o.JetStream || o.JetStreamDomain == "" {
		bad("nats.conf: JetStream with a domain is not enabled")
	}
	// server_name: $POD_NAME, with POD_NAME the pod's own name (unique).
	if v, ok := strings.CutPrefix(o.ServerName, "stand-in-"); !ok {
		bad("nats.conf: server_name %q is not taken from the pod's name ($POD_NAME)", o.ServerName)
	} else {
		for _, e := range n.C.Env {
			if strings.ToLower(e.Name) == v && (e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "metadata.name") {
				bad("nats env %s (server_name) is not the pod's metadata.name", e.Name)
			}
		}
	}
	// The store on the StatefulSet's volume, no bigger than it.
	f, err := writable(n.W.Spec, n.C, o.StoreDir)
	switch {
	case err != nil:
		bad("nats jetstream.store_dir: %v", err)
	case f.Source != "persistentVolumeClaim":
		bad("nats jetstream.store_dir %s is on a %s, want a volumeClaimTemplate", o.StoreDir, f.Source)
	default:
		for _, c := range n.W.Claims {
			if c.Name == f.Mount.Name {
				size := c.Spec.Resources.Requests[corev1.ResourceStorage]
				if o.JetStreamMaxStore <= 0 || o.JetStreamMaxStore > size.Value() {
					bad("nats jetstream.max_file_store %d is not set or exceeds its volume %s", o.JetStreamMaxStore, size.String())
				}
			}
		}
	}
	// Cluster routes: one per replica, by the pods' stable names.
	replicas := int(n.W.Replicas)
	if len(o.Routes) != replicas {
		bad("nats.conf cluster.routes: %d routes for %d replicas", len(o.Routes), replicas)
	}
	for i := 0; i < replicas; i++ {
		want := fmt.Sprintf("%s-%d.%s:%d", sts.Name, i, sts.Spec.ServiceName, o.Cluster.Port)
		if !slices.ContainsFunc(o.Routes, func(u *url.URL) bool { return u.Host == want }) {
			bad("nats.conf cluster.routes: no route to %s", want)
		}
	}
	ports := map[string]int{"client": o.Port, "cluster": o.Cluster.Port, "monitor": o.HTTPPort, "leafnodes": o.LeafNode.Port}
	for _, name := range slices.Sorted(maps.Keys(ports)) {
		if p, ok := containerPort([]*corev1.Container{n.C}, intstr.FromString(name)); !ok || int(p) != ports[name] {
			bad("nats container port %s is %d, nats.conf says %d", name, p, ports[name])
		}
	}
	out = append(out, httpProbe(n.C, "liveness", n.C.LivenessProbe, "/healthz", int32(o.HTTPPort))...)
	out = append(out, httpProbe(n.C, "readiness", n.C.ReadinessProbe, "/healthz", int32(o.HTTPPort))...)
	out = append(out, httpProbe(n.C, "startup", n.C.StartupProbe, "/healthz", int32(o.HTTPPort))...)
	// A restarted server is started only once its JetStream meta group and
	// streams are current (plain /healthz): js-enabled-only or
	// js-server-only skip that, and a rolling update would restart the next
	// server while this one still catches up.
	if p := n.C.StartupProbe; p != nil && p.HTTPGet != nil && p.HTTPGet.Path != "/healthz" {
		bad("nats startup probe GETs %s, want plain /healthz (JetStream current)", p.HTTPGet.Path)
	}
	// Authentication: the offices' leaf nodes present nats.leaf.creds_file, a
	// user JWT and nkey seed, which only operator (JWT) mode verifies.
	switch {
	case len(o.TrustedOperators) == 0:
		bad("nats.conf is not in operator (JWT) mode: the leaf node port %d lets in any leaf node, without credentials, and the offices' creds are never checked", o.LeafNode.Port)
	case o.AccountResolver == nil:
		bad("nats.conf: operator mode without an account resolver")
	}
	// The headless Service behind the route names.
	svc := b.service(sts.Spec.ServiceName)
	switch {
	case svc == nil:
		bad("StatefulSet %s: serviceName %s is not a Service in the build", sts.Name, sts.Spec.ServiceName)
	case svc.Spec.ClusterIP != corev1.ClusterIPNone:
		bad("Service %s is not headless (clusterIP: None)", svc.Name)
	case !svc.Spec.PublishNotReadyAddresses:
		bad("Service %s: publishNotReadyAddresses is false; servers cannot find their routes before they are ready", svc.Name)
	}
	// The leaf node port, reachable from the offices.
	leaf := false
	for _, s := range objects[*corev1.Service](b) {
		for _, p := range s.Spec.Ports {
			if s.Spec.Type == corev1.ServiceTypeLoadBalancer && matches(s.Spec.Selector, n.W.Labels) && int(p.Port) == o.LeafNode.Port {
				leaf = true
			}
		}
	}
	if !leaf {
		bad("no LoadBalancer Service exposes the leaf node port %d", o.LeafNode.Port)
	}
	return out
}

func checkHQ(b *build) []string {
	r, err := b.relay()
	n, err2 := b.nats()
	if r == nil || n == nil || err != nil || err2 != nil {
		return []string{"hq needs both the relay and NATS"}
	}
	cfg := r.Cfg
	var out []string
	if cfg.Relay.ID != "hq" {
		out = append(out, fmt.Sprintf("relay.id is %q, want hq", cfg.Relay.ID))
	}
	if n.Opts.JetStreamDomain != cfg.Relay.ID {
		out = append(out, fmt.Sprintf("nats.conf jetstream.domain %q is not the relay.id %q: offices address HQ's streams by domain = relay id", n.Opts.JetStreamDomain, cfg.Relay.ID))
	}
	if cfg.NATS.URL == "" {
		out = append(out, "nats.url is empty: the HQ relay must use the NATS cluster, not an embedded server")
	}
	if len(n.Opts.TrustedOperators) > 0 && cfg.NATS.CredsFile == "" {
		out = append(out, "nats.creds_file is not set: the NATS cluster is in operator mode and refuses a relay without a user's credentials")
	}
	for _, s := range strings.Split(cfg.NATS.URL, ",") {
		u, err := url.Parse(strings.TrimSpace(s))
		if err != nil || u.Hostname() == "" {
			out = append(out, fmt.Sprintf("nats.url %q is not a URL", s))
			continue
		}
		labels := strings.Split(u.Hostname(), ".")
		svc := b.service(labels[0])
		if svc == nil && len(labels) > 1 {
			svc = b.service(labels[1]) // nats-0.nats...
		}
		if svc == nil {
			out = append(out, fmt.Sprintf("nats.url host %s is not a Service of the build", u.Hostname()))
			continue
		}
		if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return strconv.Itoa(int(p.Port)) == u.Port() }) {
			out = append(out, fmt.Sprintf("nats.url %s: Service %s has no port %s", s, svc.Name, u.Port()))
		}
	}
	if cfg.NATS.Replicas > int(n.W.Replicas) {
		out = append(out, fmt.Sprintf("nats.replicas %d is more than the %d NATS servers", cfg.NATS.Replicas, n.W.Replicas))
	}
	if cfg.NATS.Replicas < 3 && n.W.Replicas >= 3 {
		out = append(out, fmt.Sprintf("nats.replicas %d on %d servers: a stream would not survive one server's loss", cfg.NATS.Replicas, n.W.Replicas))
	}
	if r.W.Replicas < 2 {
		out = append(out, fmt.Sprintf("relay has %d replica(s), want 2 at HQ", r.W.Replicas))
	}
	out = append(out, namespaced(b, "relay")...)
	return out
}

func checkOffice(b *build) []string {
	r, err := b.relay()
	if r == nil || err != nil {
		return []string{"office has no relay"}
	}
	cfg, d := r.Cfg, r.W.Deploy
	var out []string
	if cfg.Relay.ID != "office1" {
		out = append(out, fmt.Sprintf("relay.id is %q, want office1", cfg.Relay.ID))
	}
	if r.W.Replicas != 1 {
		out = append(out, fmt.Sprintf("relay replicas %d, want 1", r.W.Replicas))
	}
	if d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType || d.Spec.Strategy.RollingUpdate != nil {
		out = append(out, fmt.Sprintf("strategy %q (rollingUpdate %v), want Recreate without rollingUpdate", d.Spec.Strategy.Type, d.Spec.Strategy.RollingUpdate))
	}
	f, err := writable(r.W.Spec, r.C, cfg.Relay.DataDir)
	switch {
	case err != nil:
		out = append(out, "relay.data_dir: "+err.Error())
	case f.Source != "persistentVolumeClaim" || f.Name != "relay-data":
		out = append(out, fmt.Sprintf("relay.data_dir is on a %s %q, want the PVC relay-data", f.Source, f.Name))
	case f.Volume != nil && f.Volume.EmptyDir != nil:
		out = append(out, "the data volume is both a PVC and an emptyDir (the patch must null emptyDir)")
	default:
		pvc := b.pvc("relay-data")
		if pvc == nil {
			out = append(out, "PVC relay-data is not in the build")
		} else if !slices.Contains(pvc.Spec.AccessModes, corev1.ReadWriteOnce) {
			out = append(out, fmt.Sprintf("PVC relay-data access modes %v, want ReadWriteOnce", pvc.Spec.AccessModes))
		}
	}
	switch l := cfg.NATS.Leaf; {
	case l == nil:
		out = append(out, "nats.leaf is not set: the office's NATS must be a leaf node of HQ")
	case l.URL == "" || l.CredsFile == "":
		out = append(out, "nats.leaf needs url and creds_file")
	}
	if cfg.NATS.URL != "" {
		out = append(out, "nats.url is set: the office runs the embedded server")
	}
	if p := b.pdb("relay"); p != nil && p.Spec.MinAvailable != nil {
		out = append(out, "PodDisruptionBudget relay keeps minAvailable with one replica")
	}
	if cm := b.configMap("relay-config"); cm == nil || !strings.Contains(cm.Data["routing.yaml"], "id: office1") {
		out = append(out, "ConfigMap relay-config does not hold the office's own routing.yaml")
	}
	out = append(out, namespaced(b, "relay-office1")...)
	return out
}

// namespaced checks that every object is in ns (and the Namespace exists).
func namespaced(b *build, ns string) []string {
	var out []string
	have := false
	for _, o := range b.Objs {
		m, ok := o.Obj.(metav1.Object)
		if !ok {
			out = append(out, fmt.Sprintf("%s %s has no metadata", o.Kind, o.Name))
			continue
		}
		if o.Kind == "Namespace" {
			have = have || m.GetName() == ns
			continue
		}
		if m.GetNamespace() != ns {
			out = append(out, fmt.Sprintf("%s %s is in namespace %q, want %s", o.Kind, o.Name, m.GetNamespace(), ns))
		}
	}
	if !have {
		out = append(out, "no Namespace "+ns+" in the build")
	}
	return out
}

// ---- the checks can fail ----

// TestChecksCatch breaks a built manifest one way at a time and expects the
// named check to report a problem containing want: each assertion above is
// proven able to fail.
func TestChecksCatch(t *testing.T) {
	relayC := func(b *build) *corev1.Container { return &b.deployment("relay").Spec.Template.Spec.Containers[0] }
	natsC := func(b *build) *corev1.Container { return &b.statefulSet("nats").Spec.Template.Spec.Containers[0] }
	routing := func(old, new string) func(b *build) {
		return func(b *build) {
			cm := b.configMap("relay-config")
			if !strings.Contains(cm.Data["routing.yaml"], old) {
				panic("routing.yaml has no " + old)
			}
			cm.Data["routing.yaml"] = strings.Replace(cm.Data["routing.yaml"], old, new, 1)
		}
	}
	natsConf := func(old, new string) func(b *build) {
		return func(b *build) {
			cm := b.configMap("nats-config")
			if !strings.Contains(cm.Data["nats.conf"], old) {
				panic("nats.conf has no " + old)
			}
			cm.Data["nats.conf"] = strings.Replace(cm.Data["nats.conf"], old, new, 1)
		}
	}
	cases := []struct {
		dir, check string
		breakIt    func(b *build)
		want       string
	}{
		{dirBase, "relay probes", func(b *build) { relayC(b).LivenessProbe = nil }, "no liveness probe"},
		{dirBase, "relay probes", func(b *build) { relayC(b).ReadinessProbe.HTTPGet.Path = "/healthz" }, "readiness probe GETs /healthz, want /readyz"},
		{dirBase, "relay probes", func(b *build) { relayC(b).LivenessProbe.HTTPGet.Port = intstr.FromInt32(9090) }, "port 9090 is not container port 8088"},
		{dirBase, "relay probes", func(b *build) { relayC(b).StartupProbe = nil }, "no startup probe"},
		{dirOffice, "relay probes", func(b *build) { relayC(b).StartupProbe.FailureThreshold = 3 }, "startup probe allows 15s"},
		{dirBase, "resources", func(b *build) { delete(relayC(b).Resources.Limits, corev1.ResourceMemory) }, "no memory limit"},
		{dirNATS, "resources", func(b *build) { delete(natsC(b).Resources.Requests, corev1.ResourceCPU) }, "no cpu request"},
		{dirBase, "resources", func(b *build) { relayC(b).Resources.Requests[corev1.ResourceMemory] = resource.MustParse("1Gi") }, "above its limit"},
		{dirBase, "security context", func(b *build) {
			relayC(b).SecurityContext.RunAsNonRoot = nil
			b.deployment("relay").Spec.Template.Spec.SecurityContext.RunAsNonRoot = nil
		}, "runAsNonRoot is not true"},
		{dirBase, "security context", func(b *build) { relayC(b).SecurityContext.ReadOnlyRootFilesystem = nil }, "readOnlyRootFilesystem is not true"},
		{dirNATS, "security context", func(b *build) {
			natsC(b).SecurityContext.RunAsUser = nil
			b.statefulSet("nats").Spec.Template.Spec.SecurityContext.RunAsUser = nil
		}, "no runAsUser"},
		{dirBase, "security context", func(b *build) { relayC(b).SecurityContext.Capabilities.Drop = nil }, "do not drop ALL"},
		{dirBase, "security context", func(b *build) {
			v := true
			relayC(b).SecurityContext.AllowPrivilegeEscalation = &v
		}, "allowPrivilegeEscalation is not false"},
		{dirBase, "image tags", func(b *build) { relayC(b).Image = relayImage + ":latest" }, "tagged latest"},
		{dirNATS, "image tags", func(b *build) { natsC(b).Image = "nats" }, "has no tag"},
		{dirBase, "no secrets in ConfigMaps", routing("password_env: ERP_PASSWORD", "password: hunter2"), "password has a literal value"},
		{dirBase, "no secrets in ConfigMaps", routing("ftp://co@", "ftp://co:hunter2@"), "a URL with a password"},
		{dirBase, "no secrets in ConfigMaps", func(b *build) { b.configMap("relay-config").Data["leaf.creds"] = "x" }, "key leaf.creds: the key's name says it holds a secret"},
		{dirNATS, "no secrets in ConfigMaps", natsConf("leafnodes {", "leafnodes {\n  authorization { token: s3cr3t }"), "token has a literal value"},
		{dirBase, "routing.yaml valid", routing("tls: explicit", "tls: sometimes"), "nodes.ЦО.pickup.ftp.tls"},
		{dirBase, "routing.yaml valid", routing("listen: 0.0.0.0:8088", "listen: 127.0.0.1:8088"), "listen on 0.0.0.0"},
		{dirBase, "routing.yaml valid", routing("replicas: 3", "replicas: 3\n  bogus: 1"), "field bogus not found"},
		{dirBase, "routing.yaml valid", routing("data_dir: /var/lib/relay", "data_dir: /srv/relay"), "relay.data_dir: /srv/relay is on no volume"},
		{dirOffice, "routing.yaml valid", func(b *build) {
			vols := b.deployment("relay").Spec.Template.Spec.Volumes
			for i := range vols {
				if vols[i].Projected != nil {
					vols[i].Projected.Sources = vols[i].Projected.Sources[:1]
				}
			}
		}, "nats.leaf.creds_file /etc/relay/nats/leaf.creds"},
		{dirBase, "routing.yaml valid", func(b *build) { relayC(b).Args = []string{"run"} }, "do not name routing.yaml"},
		{dirHQ, "routing.yaml valid", func(b *build) {
			vols := b.deployment("relay").Spec.Template.Spec.Volumes
			vols[0].Projected.Sources = vols[0].Projected.Sources[:1]
		}, "nats.creds_file /etc/relay/nats/relay.creds"},
		{dirBase, "routing.yaml valid", routing("        password_env: ERP_PASSWORD\n", "        password_env: ERP_PASSWORD\n        ca_file: /etc/relay/tls/erp-ca.pem\n"),
			"nodes.ERP.deliver.http.ca_file /etc/relay/tls/erp-ca.pem: /etc/relay/tls/erp-ca.pem: no source"},
		{dirBase, "routing.yaml valid", routing("        password_env: ERP_PASSWORD\n", "        password_env: ERP_PASSWORD\n        ca_file: erp-ca.pem\n"),
			"nodes.ERP.deliver.http.ca_file erp-ca.pem is relative"},
		{dirBase, "secret env vars", func(b *build) {
			c := relayC(b)
			c.Env = slices.DeleteFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "ERP_PASSWORD" })
		}, "no env var ERP_PASSWORD"},
		{dirBase, "secret env vars", func(b *build) {
			relayC(b).Env[0].ValueFrom = nil
			relayC(b).Env[0].Value = "hunter2"
		}, "is not taken from a Secret"},
		{dirBase, "secret env vars", routing("api_token_env: RELAY_API_TOKEN", "api_token_env: OPERATOR_TOKEN"), "no env var OPERATOR_TOKEN"},
		{dirBase, "secret env vars", routing("    title: Shop 1\n", "    title: Shop 1\n    zip_password_env: SHOP1_ZIP_PASSWORD\n"), "no env var SHOP1_ZIP_PASSWORD"},
		{dirHQ, "secret env vars", routing("  replicas: 3", "  replicas: 3\n  token_env: NATS_TOKEN"), "no env var NATS_TOKEN"},
		{dirOffice, "secret env vars", func(b *build) {
			relayC(b).Env = append(relayC(b).Env, corev1.EnvVar{Name: "CO_FTP_PASSWORD", ValueFrom: &corev1.EnvVarSource{
				SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "relay-secrets"}, Key: "CO_FTP_PASSWORD"}}})
		}, "never reads it"},
		{dirBase, "references", func(b *build) {
			b.deployment("relay").Spec.Template.Spec.Volumes[0].Projected.Sources[0].ConfigMap.Name = "relay-config"
		}, "ConfigMap relay-config is not in the build"},
		{dirOffice, "references", func(b *build) {
			b.Objs = slices.DeleteFunc(b.Objs, func(o *object) bool { return o.Kind == "PersistentVolumeClaim" })
		}, "PersistentVolumeClaim relay-data is not in the build"},
		{dirBase, "selectors", func(b *build) { b.service("relay").Spec.Selector = map[string]string{"app": "relay"} }, "selects no pods"},
		{dirNATS, "selectors", func(b *build) { b.service("nats").Spec.Ports[0].TargetPort = intstr.FromString("clients") }, "no container port named clients"},
		{dirBase, "selectors", func(b *build) {
			np := objects[*networkingv1.NetworkPolicy](b)[0]
			np.Spec.Ingress[0].Ports[0].Port = ptr(intstr.FromInt32(8080))
		}, "no NetworkPolicy lets traffic in to the relay's port 8088"},
		{dirOffice, "disruption budgets", func(b *build) {
			p := b.pdb("relay")
			p.Spec.MinAvailable, p.Spec.MaxUnavailable = ptr(intstr.FromInt32(1)), nil
		}, "blocks every node drain"},
		{dirOffice, "embedded NATS store", func(b *build) { b.deployment("relay").Spec.Replicas = ptr(int32(2)) }, "2 replicas, want 1"},
		{dirOffice, "embedded NATS store", func(b *build) {
			v := &b.deployment("relay").Spec.Template.Spec.Volumes[1]
			v.PersistentVolumeClaim, v.EmptyDir = nil, &corev1.EmptyDirVolumeSource{}
		}, "is on a emptyDir, want a PersistentVolumeClaim"},
		{dirNATS, "nats cluster", natsConf("nats://nats-2.nats:6222", ""), "no route to nats-2.nats:6222"},
		{dirNATS, "nats cluster", natsConf("max_file_store: 9Gi", "max_file_store: 20Gi"), "exceeds its volume"},
		{dirNATS, "nats cluster", natsConf("server_name: $POD_NAME", "server_name: $NODE"), "no env var NODE"},
		{dirNATS, "nats cluster", natsConf("store_dir: /data", "store_dir: /tmp/js"), "store_dir: /tmp/js is on no volume"},
		{dirNATS, "nats cluster", natsConf("server_name: $POD_NAME", "server_name: nats"), "not taken from the pod's name"},
		{dirNATS, "nats cluster", func(b *build) { natsC(b).Env[0].ValueFrom.FieldRef.FieldPath = "spec.nodeName" }, "is not the pod's metadata.name"},
		{dirNATS, "nats cluster", natsConf("jetstream {", "jetstream {\n  bogus_option: 1"), "unknown field"},
		{dirNATS, "nats cluster", func(b *build) { natsC(b).ReadinessProbe.HTTPGet.Port = intstr.FromString("client") }, "readiness probe port client"},
		{dirNATS, "nats cluster", func(b *build) { natsC(b).StartupProbe.HTTPGet.Path = "/healthz?js-enabled-only=true" }, "want plain /healthz"},
		{dirNATS, "nats cluster", func(b *build) { natsC(b).StartupProbe = nil }, "no startup probe"},
		{dirNATS, "nats cluster", natsConf("include ./auth.conf", ""), "not in operator (JWT) mode"},
		{dirNATS, "nats cluster", func(b *build) {
			vols := b.statefulSet("nats").Spec.Template.Spec.Volumes
			vols[0].Projected.Sources = vols[0].Projected.Sources[:1]
		}, "no source of projected volume config lists item auth.conf"},
		{dirNATS, "nats cluster", func(b *build) {
			b.configMap("nats-config").Data["auth.conf"] = "x"
			vols := b.statefulSet("nats").Spec.Template.Spec.Volumes
			vols[0].Projected.Sources[1] = corev1.VolumeProjection{ConfigMap: &corev1.ConfigMapProjection{
				LocalObjectReference: corev1.LocalObjectReference{Name: b.configMap("nats-config").Name},
				Items:                []corev1.KeyToPath{{Key: "auth.conf", Path: "auth.conf"}}}}
		}, "from a configMap volume, want a Secret"},
		{dirNATS, "nats cluster", func(b *build) { b.service("nats").Spec.PublishNotReadyAddresses = false }, "publishNotReadyAddresses"},
		{dirNATS, "nats cluster", func(b *build) { b.service("nats-leaf").Spec.Type = corev1.ServiceTypeClusterIP }, "leaf node port 7422"},
		{dirHQ, "hq", natsConf("domain: hq", "domain: head"), `jetstream.domain "head" is not the relay.id "hq"`},
		{dirHQ, "hq", routing("url: nats://nats:4222", "url: nats://nats-client:4222"), "host nats-client is not a Service"},
		{dirHQ, "hq", routing("replicas: 3", "replicas: 1"), "would not survive"},
		{dirHQ, "hq", func(b *build) { b.deployment("relay").Namespace = "default" }, `Deployment relay is in namespace "default"`},
		{dirHQ, "hq", routing("  creds_file: /etc/relay/nats/relay.creds\n", ""), "nats.creds_file is not set"},
		{dirOffice, "office", func(b *build) { b.deployment("relay").Spec.Strategy.Type = appsv1.RollingUpdateDeploymentStrategyType }, "want Recreate"},
		{dirOffice, "office", routing("  leaf:\n    url: nats-leaf://hq-nats.example.com:7422\n    creds_file: /etc/relay/nats/leaf.creds   # from the Secret relay-nats-leaf\n", ""), "nats.leaf is not set"},
		{dirOffice, "office", func(b *build) {
			v := &b.deployment("relay").Spec.Template.Spec.Volumes[1]
			v.EmptyDir = &corev1.EmptyDirVolumeSource{}
		}, "both a PVC and an emptyDir"},
	}
	covered := map[string]bool{}
	for _, c := range cases {
		covered[c.check] = true
		t.Run(c.check+"/"+c.want, func(t *testing.T) {
			var ck *check
			for i := range checks {
				if checks[i].name == c.check {
					ck = &checks[i]
				}
			}
			if ck == nil {
				t.Fatalf("no check %q", c.check)
			}
			b := built(t, c.dir)
			if got := ck.fn(b); len(got) != 0 {
				t.Fatalf("check %q already fails on the unbroken %s: %v", c.check, c.dir, got)
			}
			c.breakIt(b)
			got := ck.fn(b)
			if !slices.ContainsFunc(got, func(p string) bool { return strings.Contains(p, c.want) }) {
				t.Errorf("%s, broken: check %q reported %q, want a problem containing %q", c.dir, c.check, got, c.want)
			}
		})
	}
	for _, ck := range checks {
		if !covered[ck.name] && !strings.HasPrefix(ck.name, "has ") {
			t.Errorf("check %q has no case here proving it can fail", ck.name)
		}
	}
}

// editRouting replaces old with new in the build's routing.yaml.
func editRouting(t *testing.T, b *build, old, new string) {
	t.Helper()
	cm := b.configMap("relay-config")
	if !strings.Contains(cm.Data["routing.yaml"], old) {
		t.Fatalf("routing.yaml has no %q", old)
	}
	cm.Data["routing.yaml"] = strings.Replace(cm.Data["routing.yaml"], old, new, 1)
}

// addSecretEnv gives the relay container env var name from relay-secrets.
func addSecretEnv(b *build, name string) {
	c := &b.deployment("relay").Spec.Template.Spec.Containers[0]
	c.Env = append(c.Env, corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{
		SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "relay-secrets"}, Key: name}}})
}

// TestSecretEnvCoversZipAndNATSVariables: besides relay.api_token_env,
// nodes.*.api_token_env and endpoint options, the relay reads
// nodes.*.zip_password_env (config.ZipPasswords: the sender's and the
// addressee's, nodes of other relays included) and nats.password_env /
// nats.token_env (bus.Open refuses to start without them). Check "secret
// env vars" asks for each, and accepts it once the Deployment has it.
func TestSecretEnvCoversZipAndNATSVariables(t *testing.T) {
	ck := func(t *testing.T, b *build) []string {
		for _, p := range checkRouting(b) {
			t.Fatalf("edited routing.yaml is not valid: %s", p)
		}
		return checkSecretEnv(b)
	}
	cases := []struct {
		name, dir, old, new, env string
	}{
		{"zip_password_env of a served node", dirBase, "    title: Central office\n",
			"    title: Central office\n    zip_password_env: CO_ZIP_PASSWORD\n", "CO_ZIP_PASSWORD"},
		// HQ takes ЦО → SHOP1 zips: it tries SHOP1's password too.
		{"zip_password_env of another relay's node", dirBase, "    title: Shop 1\n",
			"    title: Shop 1\n    zip_password_env: SHOP1_ZIP_PASSWORD\n", "SHOP1_ZIP_PASSWORD"},
		{"zip_password_env in an office", dirOffice, "    title: Central office\n",
			"    title: Central office\n    zip_password_env: CO_ZIP_PASSWORD\n", "CO_ZIP_PASSWORD"},
		{"nats.password_env", dirHQ, "  creds_file: /etc/relay/nats/relay.creds\n",
			"  user: relay\n  password_env: NATS_PASSWORD\n", "NATS_PASSWORD"},
		{"nats.token_env", dirHQ, "  creds_file: /etc/relay/nats/relay.creds\n",
			"  token_env: NATS_TOKEN\n", "NATS_TOKEN"},
	}
	for _, c := range cases {
		t.Run(c.name+"/missing env var is reported", func(t *testing.T) {
			b := built(t, c.dir)
			editRouting(t, b, c.old, c.new)
			got := ck(t, b)
			if !slices.ContainsFunc(got, func(p string) bool { return strings.Contains(p, "no env var "+c.env) }) {
				t.Errorf("routing.yaml reads %s, the Deployment has no such env var, and check \"secret env vars\" reports %q", c.env, got)
			}
		})
		t.Run(c.name+"/present env var is accepted", func(t *testing.T) {
			b := built(t, c.dir)
			editRouting(t, b, c.old, c.new)
			addSecretEnv(b, c.env)
			if got := ck(t, b); len(got) > 0 {
				t.Errorf("routing.yaml reads %s and the Deployment provides it, yet check \"secret env vars\" reports %q", c.env, got)
			}
		})
	}
}

// TestEndpointFilesMounted: an endpoint's own files (ftp/http/smtp/imap
// ca_file) must be on a Secret or ConfigMap volume of the pod, like the nats
// files: a CA named in routing.yaml that no volume holds fails every TLS
// handshake. Mounting it clears the problem; a node this relay does not
// serve is not its business.
func TestEndpointFilesMounted(t *testing.T) {
	const ca = "        password_env: ERP_PASSWORD\n        ca_file: /etc/relay/tls/erp-ca.pem\n"
	has := func(got []string) bool {
		return slices.ContainsFunc(got, func(p string) bool { return strings.Contains(p, "/etc/relay/tls/erp-ca.pem") })
	}
	t.Run("not mounted", func(t *testing.T) {
		b := built(t, dirBase)
		editRouting(t, b, "        password_env: ERP_PASSWORD\n", ca)
		if got := checkRouting(b); !has(got) {
			t.Errorf("nodes.ERP.deliver.http.ca_file is on no volume of the pod, yet check \"routing.yaml valid\" reports %q", got)
		}
	})
	t.Run("mounted from a Secret", func(t *testing.T) {
		b := built(t, dirBase)
		editRouting(t, b, "        password_env: ERP_PASSWORD\n", ca)
		v := &b.deployment("relay").Spec.Template.Spec.Volumes[0]
		v.Projected.Sources = append(v.Projected.Sources, corev1.VolumeProjection{Secret: &corev1.SecretProjection{
			LocalObjectReference: corev1.LocalObjectReference{Name: "relay-tls"},
			Items:                []corev1.KeyToPath{{Key: "erp-ca.pem", Path: "tls/erp-ca.pem"}}}})
		if got := checkRouting(b); len(got) > 0 {
			t.Errorf("the CA is mounted from Secret relay-tls, yet check \"routing.yaml valid\" reports %q", got)
		}
	})
	t.Run("node of another relay", func(t *testing.T) {
		b := built(t, dirOffice)
		editRouting(t, b, "        password_env: ERP_PASSWORD\n", ca)
		if got := checkRouting(b); len(got) > 0 {
			t.Errorf("office1 does not serve ERP, yet check \"routing.yaml valid\" reports %q", got)
		}
	})
}

// TestDecodeStrict proves the strict decoding refuses what the API server
// would refuse or what this test cannot check.
func TestDecodeStrict(t *testing.T) {
	dep := `{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"x"},"spec":{"replicas":1%s}}`
	cases := []struct {
		name, kind, json, want string
	}{
		{"valid", "Deployment", fmt.Sprintf(dep, ""), ""},
		{"unknown field", "Deployment", fmt.Sprintf(dep, `,"replicaz":2`), `unknown field "replicaz"`},
		{"wrong case", "Deployment", fmt.Sprintf(dep, `,"MinReadySeconds":2`), "wrong case"},
		{"wrong type", "Deployment", fmt.Sprintf(dep, `,"paused":"yes"`), "cannot unmarshal"},
		{"wrong apiVersion", "PodDisruptionBudget", `{"apiVersion":"policy/v1beta1","kind":"PodDisruptionBudget","metadata":{"name":"x"}}`, `want "policy/v1"`},
		{"unknown kind", "Ingress", `{"apiVersion":"networking.k8s.io/v1","kind":"Ingress"}`, "not one this test knows"},
		{"secret", "Secret", `{"apiVersion":"v1","kind":"Secret"}`, "a Secret is part of the manifests"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := decodeStrict(c.kind, []byte(c.json))
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("decodeStrict: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("decodeStrict: error %v, want one containing %q", err, c.want)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }
