//! Run-time values of the graph runner: burn tensors of one fixed rank
//! ([`R`]) with the ONNX shape beside them.
//!
//! burn tensors carry their rank in the type (`Tensor<4>`), ONNX graphs decide
//! ranks at run time. Every value is stored as a `Tensor<R>` whose leading
//! dimensions are 1 and whose last `shape.len()` dimensions are the ONNX
//! shape. Right-aligned padding is exactly numpy broadcasting, so
//! element-wise ops broadcast as ONNX says; an axis `a` of a rank-`r` value is
//! axis `a + R - r` of the tensor. Operators with a natural rank (convolution,
//! pooling, matmul) reshape to it and back, which is free for a contiguous
//! tensor.

use burn::prelude::*;
use burn::tensor::{Bool, DType, Int, TensorData};

/// The rank every value is stored at: ONNX image models use up to 6, and
/// burn-ndarray takes no more.
pub const R: usize = 6;

/// A tensor of one of the three kinds ONNX graphs compute with. Floats are
/// f32, integers burn's `Int` (shapes, indices), booleans masks.
#[derive(Debug, Clone)]
pub enum Data {
    /// Any ONNX floating-point type, computed in f32.
    F(Tensor<R>),
    /// Any ONNX integer type.
    I(Tensor<R, Int>),
    /// ONNX `bool`.
    B(Tensor<R, Bool>),
}

/// One value of the graph: data padded to rank [`R`] and its ONNX shape.
#[derive(Debug, Clone)]
pub struct Value {
    /// The tensor, `[1, …, 1, shape…]`.
    pub data: Data,
    /// The ONNX shape (empty for a scalar).
    pub shape: Vec<usize>,
}

/// Applies one generic expression to whichever kind a [`Data`] holds.
macro_rules! each_kind {
    ($data:expr, $t:ident => $e:expr) => {
        match $data {
            $crate::onnx::value::Data::F($t) => $crate::onnx::value::Data::F($e),
            $crate::onnx::value::Data::I($t) => $crate::onnx::value::Data::I($e),
            $crate::onnx::value::Data::B($t) => $crate::onnx::value::Data::B($e),
        }
    };
}
pub(crate) use each_kind;

/// `shape` right-aligned in `R` dimensions.
pub fn padded(shape: &[usize]) -> Result<[usize; R], String> {
    if shape.len() > R {
        return Err(format!("rank {} is above the runner's limit of {R}", shape.len()));
    }
    let mut dims = [1; R];
    dims[R - shape.len()..].copy_from_slice(shape);
    Ok(dims)
}

impl Value {
    /// A float value from a tensor already at rank `R` whose ONNX rank is `rank`.
    pub fn from_data(data: Data, rank: usize) -> Value {
        let dims = data.dims();
        Value { data, shape: dims[R - rank..].to_vec() }
    }

    /// The ONNX rank.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the value holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tensor axis of ONNX axis `a` (already non-negative).
    pub fn axis(&self, a: usize) -> usize {
        a + R - self.rank()
    }

    /// A value read from ONNX tensor data (an initializer, a constant, a test input).
    pub fn from_tensor_data(td: &TensorData, device: &Device) -> Result<Value, String> {
        let shape: Vec<usize> = td.shape().to_vec();
        let dims = padded(&shape)?;
        let data = match td.dtype() {
            DType::F32 | DType::F64 | DType::F16 | DType::BF16 => {
                let v = td.clone().convert::<f32>().try_to_vec::<f32>().map_err(|e| format!("{e:?}"))?;
                Data::F(Tensor::<R>::from_data(TensorData::new(v, dims), device))
            }
            DType::Bool(_) => {
                let v = td.clone().try_to_vec::<bool>().map_err(|e| format!("{e:?}"))?;
                Data::B(Tensor::<R, Bool>::from_data(TensorData::new(v, dims), device))
            }
            DType::I64 | DType::I32 | DType::I16 | DType::I8 | DType::U8 | DType::U16 | DType::U32 | DType::U64 => {
                let v = td.clone().convert::<i64>().try_to_vec::<i64>().map_err(|e| format!("{e:?}"))?;
                Data::I(Tensor::<R, Int>::from_data(TensorData::new(v, dims), device))
            }
            other => return Err(format!("tensors of type {other:?} are not supported")),
        };
        Ok(Value { data, shape })
    }

    /// An integer value from host numbers.
    pub fn ints(values: Vec<i64>, shape: Vec<usize>, device: &Device) -> Result<Value, String> {
        let dims = padded(&shape)?;
        Ok(Value { data: Data::I(Tensor::<R, Int>::from_data(TensorData::new(values, dims), device)), shape })
    }

    /// A float value from host numbers.
    pub fn floats(values: Vec<f32>, shape: Vec<usize>, device: &Device) -> Result<Value, String> {
        let dims = padded(&shape)?;
        Ok(Value { data: Data::F(Tensor::<R>::from_data(TensorData::new(values, dims), device)), shape })
    }

    /// The float tensor (an error naming `what` for another kind).
    pub fn float(&self, what: &str) -> Result<Tensor<R>, String> {
        match &self.data {
            Data::F(t) => Ok(t.clone()),
            _ => Err(format!("{what}: expected a float tensor")),
        }
    }

    /// Consumes the value for its float tensor.
    pub fn into_float(self, what: &str) -> Result<Tensor<R>, String> {
        match self.data {
            Data::F(t) => Ok(t),
            Data::I(t) => Ok(t.float()),
            Data::B(_) => Err(format!("{what}: expected a float tensor, got bool")),
        }
    }

    /// The values as host integers (shapes, axes, indices), any kind.
    pub fn to_i64s(&self) -> Result<Vec<i64>, String> {
        let td = match &self.data {
            Data::F(t) => t.clone().try_into_data(),
            Data::I(t) => t.clone().try_into_data(),
            Data::B(t) => t.clone().int().try_into_data(),
        };
        let td = td.map_err(|e| format!("reading integers from the device: {e}"))?.convert::<i64>();
        td.try_to_vec::<i64>().map_err(|e| format!("reading integers: {e:?}"))
    }

    /// The values as host floats, any kind.
    pub fn to_f32s(&self) -> Result<Vec<f32>, String> {
        // A device that fails (a buffer above its limit) is an error here, not a panic.
        let td = match &self.data {
            Data::F(t) => t.clone().try_into_data(),
            Data::I(t) => t.clone().float().try_into_data(),
            Data::B(t) => t.clone().int().float().try_into_data(),
        };
        let td = td.map_err(|e| format!("reading floats from the device: {e}"))?.convert::<f32>();
        td.try_to_vec::<f32>().map_err(|e| format!("reading floats: {e:?}"))
    }

    /// The same data with a new ONNX shape of as many elements.
    pub fn reshape(self, shape: Vec<usize>) -> Result<Value, String> {
        let n: usize = shape.iter().product();
        if n != self.len() {
            return Err(format!("cannot reshape {:?} ({} elements) to {shape:?}", self.shape, self.len()));
        }
        let dims = padded(&shape)?;
        let data = each_kind!(self.data, t => t.reshape(dims));
        Ok(Value { data, shape })
    }
}

impl Data {
    /// The rank-`R` dims.
    pub fn dims(&self) -> [usize; R] {
        match self {
            Data::F(t) => t.dims(),
            Data::I(t) => t.dims(),
            Data::B(t) => t.dims(),
        }
    }
}
