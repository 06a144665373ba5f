//! Where inference runs (`--device auto|cpu|cuda[:N]`), decided once before any work: a GPU
//! the user asked for and cannot have fails the run at once, with the reason, not midway.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

/// The device the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The first CUDA GPU when this binary has CUDA and the machine a usable GPU, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// CUDA GPU N, counted as the driver does (after `CUDA_VISIBLE_DEVICES`).
    Cuda(usize),
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown device `{0}` (expected auto, cpu, cuda or cuda:N)")]
pub struct ParseDeviceError(String);

impl FromStr for DeviceChoice {
    type Err = ParseDeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                // Digits only: usize's parser would take "+1".
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| ParseDeviceError(s.to_string())),
        }
    }
}

/// A GPU that was asked for and cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("--device {choice}: {cause}")]
pub struct DeviceError {
    pub choice: DeviceChoice,
    pub cause: Unavailable,
}

/// Why no CUDA device: one variant per step that can fail on the way to one.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("this barge-runner was built without CUDA (docs/cuda.md says how to build one with it)")]
    NotBuilt,
    #[error("no usable NVIDIA driver ({0})")]
    NoDriver(String),
    #[error("there is no CUDA device {ordinal}: the driver sees {count}")]
    NoDevice { ordinal: usize, count: usize },
    #[error(
        "the CUDA libraries cannot be loaded ({0}); CUDA 13's libcublas, libcublasLt, libcurand and \
         libnvrtc must be on the library path"
    )]
    Libraries(String),
    #[error("CUDA device {ordinal} cannot be opened: {source}")]
    Open {
        ordinal: usize,
        #[source]
        source: candle_core::Error,
    },
}

/// The device for `choice`. `auto` never fails: without a usable GPU it says why in the log and
/// runs on the CPU.
pub fn select(choice: DeviceChoice) -> Result<Device, DeviceError> {
    let device = match choice {
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Cuda(ordinal) => cuda(ordinal).map_err(|cause| DeviceError { choice, cause })?,
        DeviceChoice::Auto => match cuda(0) {
            Ok(device) => device,
            Err(Unavailable::NotBuilt) => Device::Cpu,
            // No GPU on this machine: the expected case for a CUDA build on a CPU node.
            Err(reason @ (Unavailable::NoDriver(_) | Unavailable::NoDevice { .. })) => {
                tracing::info!(%reason, "no CUDA GPU; running on the CPU");
                Device::Cpu
            }
            // A GPU is there but unusable: most likely a broken image, worth a warning.
            Err(reason) => {
                tracing::warn!(%reason, "a CUDA GPU is there but unusable; running on the CPU");
                Device::Cpu
            }
        },
    };
    tracing::info!(device = %describe(&device), "inference device");
    Ok(device)
}

fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda(_ordinal: usize) -> Result<Device, Unavailable> {
    Err(Unavailable::NotBuilt)
}

#[cfg(feature = "cuda")]
fn cuda(ordinal: usize) -> Result<Device, Unavailable> {
    use candle_core::cuda_backend::cudarc::driver::CudaContext;

    // cuInit, through the driver library loaded on first use.
    let count = quietly(CudaContext::device_count)
        .map_err(|_| Unavailable::NoDriver("its library, libcuda.so.1, cannot be loaded".into()))?
        .map_err(|e| Unavailable::NoDriver(e.to_string()))?;
    let count = usize::try_from(count).unwrap_or(0);
    if ordinal >= count {
        return Err(Unavailable::NoDevice { ordinal, count });
    }
    // Opening a device also loads cuBLAS and cuRAND, which candle sets up with it.
    quietly(|| Device::new_cuda(ordinal))
        .map_err(Unavailable::Libraries)?
        .map_err(|source| Unavailable::Open { ordinal, source })
}

/// Runs `f`, turning a panic into its message's first part.
///
/// The CUDA build compiles cudarc to dlopen the driver and the CUDA libraries on first use (see
/// scripts/cuda-rustc-wrapper.sh), and cudarc panics when one is missing; here that only means
/// "no GPU", so it becomes an error. The panic hook is silenced meanwhile so that no panic report
/// reaches stderr. Caveat: the hook is process-wide; this runs once, before any work starts, when
/// no other thread of the runner is doing anything that could panic.
#[cfg(feature = "cuda")]
fn quietly<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(f);
    std::panic::set_hook(hook);
    result.map_err(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("a panic without a message");
        // cudarc's message goes on with every file name it tried.
        message.split(" - searched").next().unwrap_or(message).to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_documented_form() {
        for (text, choice) in [
            ("auto", DeviceChoice::Auto),
            ("cpu", DeviceChoice::Cpu),
            ("cuda", DeviceChoice::Cuda(0)),
            ("cuda:0", DeviceChoice::Cuda(0)),
            ("cuda:3", DeviceChoice::Cuda(3)),
        ] {
            assert_eq!(text.parse::<DeviceChoice>(), Ok(choice), "{text}");
        }
    }

    #[test]
    fn displays_what_parses_back() {
        for choice in [DeviceChoice::Auto, DeviceChoice::Cpu, DeviceChoice::Cuda(2)] {
            assert_eq!(choice.to_string().parse::<DeviceChoice>(), Ok(choice));
        }
    }

    #[test]
    fn rejects_bad_values_naming_them() {
        for bad in ["gpu", "CUDA", "cuda:", "cuda:x", "cuda:+1", "cuda:-1", "cuda0", " cpu", ""] {
            let err = bad.parse::<DeviceChoice>().expect_err(bad);
            assert_eq!(
                err.to_string(),
                format!("unknown device `{bad}` (expected auto, cpu, cuda or cuda:N)")
            );
        }
    }

    #[test]
    fn cpu_is_always_there() {
        assert!(select(DeviceChoice::Cpu).expect("cpu").is_cpu());
    }

    #[test]
    fn auto_never_fails() {
        // The CPU here, or the first GPU on a machine with one.
        select(DeviceChoice::Auto).expect("auto falls back to the CPU");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn asking_a_cpu_build_for_cuda_says_it_has_none() {
        let err = select(DeviceChoice::Cuda(0)).expect_err("no CUDA in this build");
        assert!(matches!(err.cause, Unavailable::NotBuilt));
        assert_eq!(
            err.to_string(),
            "--device cuda:0: this barge-runner was built without CUDA (docs/cuda.md says how to build one with it)"
        );
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn a_gpu_that_is_not_there_is_an_error_naming_the_cause() {
        // No machine has 4096 GPUs: without a driver the driver is the cause, with one the count.
        let err = select(DeviceChoice::Cuda(4096)).expect_err("no such GPU");
        match &err.cause {
            Unavailable::NoDriver(_) => {}
            Unavailable::NoDevice { ordinal, .. } => assert_eq!(*ordinal, 4096),
            other => panic!("unexpected cause: {other}"),
        }
        assert!(err.to_string().starts_with("--device cuda:4096: "), "{err}");
    }

    #[test]
    fn errors_name_the_device_asked_for_and_the_cause() {
        let err = DeviceError {
            choice: DeviceChoice::Cuda(1),
            cause: Unavailable::NoDevice { ordinal: 1, count: 1 },
        };
        assert_eq!(err.to_string(), "--device cuda:1: there is no CUDA device 1: the driver sees 1");
    }
}
