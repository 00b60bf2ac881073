// Pins the KubeRay release whose CRDs the integration tests install. Nothing
// is built from it: hack/build-controlplane.sh downloads the module (checksum
// checked against go.sum) and copies config/crd/bases/*.yaml out of it.
// Kept apart from hack/controlplane because its requirements (k8s.io v0.33,
// controller-runtime, ...) would drag the kubernetes v1.32 build graph forward.
module github.com/anytasktune/hack/kuberay

go 1.23.0

require github.com/ray-project/kuberay/ray-operator v1.4.2
