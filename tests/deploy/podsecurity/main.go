// Command podsecurity evaluates the pod templates of Kubernetes manifests with the Pod Security
// Admission library that the API server itself runs, at a given level and policy version.
//
//	podsecurity -level restricted -version v1.35 FILE...
//
// Prints one line per pod template; exits 1 if any is not allowed.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
)

type podTemplate struct {
	name string
	meta *metav1.ObjectMeta
	spec *corev1.PodSpec
}

// templates returns the pod templates of one decoded manifest document (none for other kinds).
func templates(raw []byte) ([]podTemplate, error) {
	var typeMeta metav1.TypeMeta
	if err := yaml.Unmarshal(raw, &typeMeta); err != nil {
		return nil, err
	}
	one := func(name string, meta *metav1.ObjectMeta, spec *corev1.PodSpec) []podTemplate {
		return []podTemplate{{typeMeta.Kind + "/" + name, meta, spec}}
	}
	switch typeMeta.Kind {
	case "Pod":
		var o corev1.Pod
		err := yaml.UnmarshalStrict(raw, &o)
		return one(o.Name, &o.ObjectMeta, &o.Spec), err
	case "Deployment":
		var o appsv1.Deployment
		err := yaml.UnmarshalStrict(raw, &o)
		return one(o.Name, &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec), err
	case "StatefulSet":
		var o appsv1.StatefulSet
		err := yaml.UnmarshalStrict(raw, &o)
		return one(o.Name, &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec), err
	case "DaemonSet":
		var o appsv1.DaemonSet
		err := yaml.UnmarshalStrict(raw, &o)
		return one(o.Name, &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec), err
	case "Job":
		var o batchv1.Job
		err := yaml.UnmarshalStrict(raw, &o)
		return one(o.Name, &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec), err
	case "CronJob":
		var o batchv1.CronJob
		err := yaml.UnmarshalStrict(raw, &o)
		t := &o.Spec.JobTemplate.Spec.Template
		return one(o.Name, &t.ObjectMeta, &t.Spec), err
	}
	return nil, nil
}

func main() {
	level := flag.String("level", "restricted", "Pod Security level: baseline or restricted")
	version := flag.String("version", "latest", "policy version, e.g. v1.35")
	flag.Parse()
	lv, err := levelVersion(*level, *version)
	if err != nil {
		fail(err)
	}
	evaluator, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		fail(err)
	}
	denied := 0
	for _, path := range flag.Args() {
		data, err := os.ReadFile(path)
		if err != nil {
			fail(err)
		}
		reader := yaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
		for {
			document, err := reader.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				fail(fmt.Errorf("%s: %w", path, err))
			}
			pods, err := templates(document)
			if err != nil {
				fail(fmt.Errorf("%s: %w", path, err))
			}
			for _, pod := range pods {
				result := policy.AggregateCheckResults(evaluator.EvaluatePod(lv, pod.meta, pod.spec))
				if result.Allowed {
					fmt.Printf("%s: %s: allowed by %s:%s\n", path, pod.name, lv.Level, lv.Version)
				} else {
					denied++
					fmt.Printf("%s: %s: DENIED by %s:%s: %s\n", path, pod.name, lv.Level, lv.Version,
						result.ForbiddenDetail())
				}
			}
		}
	}
	if denied > 0 {
		os.Exit(1)
	}
}

func levelVersion(level, version string) (api.LevelVersion, error) {
	l, err := api.ParseLevel(level)
	if err != nil {
		return api.LevelVersion{}, err
	}
	v, err := api.ParseVersion(version)
	return api.LevelVersion{Level: l, Version: v}, err
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "podsecurity:", err)
	os.Exit(2)
}
