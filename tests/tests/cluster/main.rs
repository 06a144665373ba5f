//! End-to-end user stories on the real test cluster: kube-apiserver, etcd, scheduler and
//! controller-manager from `tests/testbed/up`, the node agent running pods as processes, MinIO,
//! the real operator and runner binaries and the real MiniLM model.

mod harness;

mod bad_specs;
mod chaos;
mod faults;
mod jobs;
mod lifecycle;
mod operations;
mod scale;
