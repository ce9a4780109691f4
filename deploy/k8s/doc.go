// Package k8s holds the Kubernetes manifests; its test builds and checks them.
package k8s
