//! SQL functions for spanflow's tables, registered on every session:
//!
//! - `quantile_from_buckets(bounds, counts, q)`: the `q`-quantile (0..=1) of an
//!   explicit-bucket histogram row (`bucket_bounds`, `bucket_counts`), interpolated inside
//!   the bucket as Prometheus' `histogram_quantile` does; NULL for an empty histogram.
//! - `sum_buckets(counts)`: aggregate, the element-wise sum of histogram counts, to merge
//!   intervals (`quantile_from_buckets(first_value(bucket_bounds), sum_buckets(bucket_counts), 0.99)`).
//! - `hex(bytes)` / `unhex(text)`: trace and span ids as lowercase hex and back.
//!
//! The quantile is the operators' own [`quantile_from_buckets`], so SQL and the run
//! summary agree to the last bit.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, Float64Array, Float64Builder, ListArray,
    StringBuilder, UInt64Array,
};
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type, UInt64Type};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::function::AccumulatorArgs;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use spanflow_operators::metrics::quantile_from_buckets;

/// Registers every spanflow function on `ctx`.
pub fn register(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::new_from_impl(QuantileFromBuckets::new()));
    ctx.register_udf(ScalarUDF::new_from_impl(Hex::new()));
    ctx.register_udf(ScalarUDF::new_from_impl(Unhex::new()));
    ctx.register_udaf(AggregateUDF::new_from_impl(SumBuckets::new()));
}

fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", item, true)))
}

/// Whether `t` is a list (of any kind) whose items are numeric, or NULL.
fn numeric_list(t: &DataType) -> bool {
    match t {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            f.data_type().is_numeric() || f.data_type() == &DataType::Null
        }
        DataType::Null => true,
        _ => false,
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct QuantileFromBuckets {
    signature: Signature,
}

impl QuantileFromBuckets {
    fn new() -> Self {
        QuantileFromBuckets {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for QuantileFromBuckets {
    fn name(&self) -> &str {
        "quantile_from_buckets"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        let [bounds, counts, q] = args else {
            return plan_err!(
                "quantile_from_buckets(bounds, counts, q) takes 3 arguments, got {}",
                args.len()
            );
        };
        if !numeric_list(bounds) || !numeric_list(counts) {
            return plan_err!(
                "quantile_from_buckets(bounds, counts, q) needs two numeric lists (e.g. \
                 bucket_bounds, bucket_counts), got {bounds} and {counts}"
            );
        }
        if !q.is_numeric() && q != &DataType::Null {
            return plan_err!("quantile_from_buckets: q must be a number in 0..1, got {q}");
        }
        Ok(vec![
            list_of(DataType::Float64),
            list_of(DataType::UInt64),
            DataType::Float64,
        ])
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [bounds, counts, q] = arrays.as_slice() else {
            return exec_err!("quantile_from_buckets takes 3 arguments");
        };
        let bounds = bounds.as_list::<i32>();
        let counts = counts.as_list::<i32>();
        let q = q.as_primitive::<Float64Type>();
        let mut out = Float64Builder::with_capacity(n);
        let mut b_buf = Vec::new();
        let mut c_buf = Vec::new();
        for i in 0..n {
            if bounds.is_null(i) || counts.is_null(i) || q.is_null(i) {
                out.append_null();
                continue;
            }
            floats(&bounds.value(i), &mut b_buf);
            counts_of(&counts.value(i), &mut c_buf);
            out.append_option(quantile_from_buckets(&b_buf, &c_buf, q.value(i)));
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// The non-null values of a Float64 list item.
fn floats(a: &ArrayRef, out: &mut Vec<f64>) {
    out.clear();
    let a: &Float64Array = a.as_primitive();
    out.extend(a.iter().flatten());
}

/// A UInt64 list item, NULL counted as 0 (positions matter).
fn counts_of(a: &ArrayRef, out: &mut Vec<u64>) {
    out.clear();
    let a: &UInt64Array = a.as_primitive();
    out.extend(a.iter().map(|v| v.unwrap_or(0)));
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Hex {
    signature: Signature,
}

impl Hex {
    fn new() -> Self {
        Hex {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Hex {
    fn name(&self) -> &str {
        "hex"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        match args {
            [
                DataType::Binary
                | DataType::LargeBinary
                | DataType::BinaryView
                | DataType::FixedSizeBinary(_)
                | DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Null,
            ] => Ok(vec![DataType::Binary]),
            [other] => plan_err!("hex(bytes) takes binary (e.g. trace_id), got {other}"),
            _ => plan_err!("hex(bytes) takes 1 argument, got {}", args.len()),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let Some(input) = arrays.first() else {
            return exec_err!("hex takes 1 argument");
        };
        let input = input.as_binary::<i32>();
        let mut out = StringBuilder::with_capacity(input.len(), input.values().len() * 2);
        let mut buf = String::new();
        for v in input.iter() {
            match v {
                Some(bytes) => {
                    buf.clear();
                    buf.push_str(&hex::encode(bytes));
                    out.append_value(&buf);
                }
                None => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Unhex {
    signature: Signature,
}

impl Unhex {
    fn new() -> Self {
        Unhex {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Unhex {
    fn name(&self) -> &str {
        "unhex"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Binary)
    }

    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        match args {
            [DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null] => {
                Ok(vec![DataType::Utf8])
            }
            [other] => plan_err!("unhex(text) takes a hex string, got {other}"),
            _ => plan_err!("unhex(text) takes 1 argument, got {}", args.len()),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let Some(input) = arrays.first() else {
            return exec_err!("unhex takes 1 argument");
        };
        let input = input.as_string::<i32>();
        let mut out = BinaryBuilder::with_capacity(input.len(), input.values().len() / 2);
        for v in input.iter() {
            match v {
                Some(text) => match hex::decode(text.trim()) {
                    Ok(bytes) => out.append_value(bytes),
                    Err(e) => return exec_err!("unhex('{text}'): not hex ({e})"),
                },
                None => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct SumBuckets {
    signature: Signature,
}

impl SumBuckets {
    fn new() -> Self {
        SumBuckets {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for SumBuckets {
    fn name(&self) -> &str {
        "sum_buckets"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(list_of(DataType::UInt64))
    }

    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        match args {
            [t] if numeric_list(t) => Ok(vec![list_of(DataType::UInt64)]),
            [other] => plan_err!(
                "sum_buckets(counts) takes a list of counts (e.g. bucket_counts), got {other}"
            ),
            _ => plan_err!("sum_buckets(counts) takes 1 argument, got {}", args.len()),
        }
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(BucketSum::default()))
    }

    fn return_field(&self, _args: &[FieldRef]) -> Result<FieldRef> {
        Ok(Arc::new(Field::new(
            self.name(),
            list_of(DataType::UInt64),
            true,
        )))
    }
}

/// Element-wise sum of the histograms seen; `None` until the first non-null one.
#[derive(Debug, Default)]
struct BucketSum {
    sum: Option<Vec<u64>>,
}

impl BucketSum {
    fn add_lists(&mut self, lists: &ListArray) {
        for i in 0..lists.len() {
            if lists.is_null(i) {
                continue;
            }
            let item = lists.value(i);
            let counts = item.as_primitive::<UInt64Type>();
            let sum = self.sum.get_or_insert_with(Vec::new);
            if sum.len() < counts.len() {
                sum.resize(counts.len(), 0);
            }
            for (s, c) in sum.iter_mut().zip(counts.iter()) {
                *s = s.saturating_add(c.unwrap_or(0));
            }
        }
    }

    fn value(&self) -> ScalarValue {
        match &self.sum {
            Some(sum) => {
                ScalarValue::List(Arc::new(
                    ListArray::from_iter_primitive::<UInt64Type, _, _>([Some(
                        sum.iter().map(|c| Some(*c)),
                    )]),
                ))
            }
            None => ScalarValue::try_from(list_of(DataType::UInt64)).unwrap_or(ScalarValue::Null),
        }
    }
}

impl Accumulator for BucketSum {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let Some(v) = values.first() else {
            return exec_err!("sum_buckets takes 1 argument");
        };
        self.add_lists(v.as_list::<i32>());
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(self.value())
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.sum.as_ref().map_or(0, |s| s.capacity() * 8)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.value()])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.update_batch(states)
    }
}
