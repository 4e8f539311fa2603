// Shared helpers of the detection operator library: attribute parsing with clear errors,
// the OpenMP thread count, and shape / dtype checks.
//
// Errors are reported the way MXNet's extension API expects: write the message with
// MX_ERROR_MSG and return MX_FAIL; the Python user then sees an MXNetError with the message.
#ifndef DETOPS_COMMON_H_
#define DETOPS_COMMON_H_

#include <omp.h>

#include <string>
#include <unordered_map>
#include <vector>

#include "mxnet/lib_api.h"

namespace detops {

using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::OpResource;
using mxnet::ext::MX_FAIL;
using mxnet::ext::MX_SUCCESS;
using Attrs = std::unordered_map<std::string, std::string>;
using Shapes = std::vector<std::vector<unsigned int>>;

// Threads for one kernel: the count set from Python (lib.ops.set_num_threads, which follows the
// project's thread setting), else omp_get_max_threads(); 1 in a forked child process (a forked
// child cannot reuse the parent's OpenMP thread pool, and MXNet itself disables OpenMP there).
int num_threads();
// num_threads() for a loop of about `work` inner iterations, 1 when the work is too small for
// a parallel region to pay off (each region ends in a barrier, slow on a busy machine).
inline int worth_threads(double work) { return work >= 16384.0 ? num_threads() : 1; }

// Attribute readers. Each returns false (after MX_ERROR_MSG) when the value does not parse.
// `op` names the operator in the message.
bool attr_int(const Attrs& attrs, const char* op, const char* key, int default_value, int* out);
bool attr_required_int(const Attrs& attrs, const char* op, const char* key, int* out);
bool attr_float(const Attrs& attrs, const char* op, const char* key, float default_value, float* out);
bool attr_required_float(const Attrs& attrs, const char* op, const char* key, float* out);
bool attr_bool(const Attrs& attrs, const char* op, const char* key, bool default_value, bool* out);
bool attr_float_tuple(const Attrs& attrs, const char* op, const char* key,
                      const std::vector<float>& default_value, std::vector<float>* out);
// Fails on attribute names the operator does not know (typos), ignoring MXNet's "__x__" keys.
bool check_attr_names(const Attrs& attrs, const char* op, const std::vector<std::string>& known);

// "(1, 1024, 38, 63)" for messages.
std::string shape_str(const std::vector<unsigned int>& shape);
std::string shape_str(const MXTensor& tensor);
const char* dtype_name(int dtype);

// All inputs float32 or all float64 (when allow_double); outputs get the same type.
bool infer_same_float_type(const char* op, const std::vector<std::string>& input_names,
                           bool allow_double, std::vector<int>* in_types, std::vector<int>* out_types);

// Drop the messages of earlier failures: lib_api keeps every message for the life of the process
// and MXNet shows them all, so without this a second error would repeat the first one.
void clear_error_messages();
// Start a new error message: `DETOPS_ERROR << "what is wrong"; return MX_FAIL;`
#define DETOPS_ERROR (::detops::clear_error_messages(), MX_ERROR_MSG)

// Zero-fill every output tensor (gradients arrive uninitialised).
void zero_outputs(std::vector<MXTensor>* outputs);

}  // namespace detops

// Register the CPU operator NAME from the functions parse_attrs, infer_type, infer_shape, forward and
// backward of namespace detops in the including file (each op file keeps its own in an anonymous one).
#define DETOPS_REGISTER_CPU_OP(NAME)              \
  REGISTER_OP(NAME)                               \
      .setParseAttrs(detops::parse_attrs)         \
      .setInferType(detops::infer_type)           \
      .setInferShape(detops::infer_shape)         \
      .setForward(detops::forward, "cpu")         \
      .setBackward(detops::backward, "cpu")

#endif  // DETOPS_COMMON_H_
