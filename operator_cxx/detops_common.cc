// Library entry points (initialize, thread control, source hash) and shared helpers.
#include "detops_common.h"

#include <pthread.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <sstream>

#ifndef DETOPS_SOURCE_HASH
#define DETOPS_SOURCE_HASH "unknown"
#endif

namespace detops {

namespace {
std::atomic<int> g_threads{0};         // 0: use omp_get_max_threads()
std::atomic<bool> g_forked_child{false};

void on_fork_child() { g_forked_child.store(true); }

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\n\r");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t\n\r");
  return s.substr(b, e - b + 1);
}

bool parse_long(const std::string& text, long* out) {
  std::string s = trim(text);
  if (s.empty()) return false;
  errno = 0;
  char* end = nullptr;
  long v = std::strtol(s.c_str(), &end, 10);
  if (errno != 0 || *end != '\0') {
    // accept integral floats such as "16.0"
    char* fend = nullptr;
    double d = std::strtod(s.c_str(), &fend);
    if (*fend != '\0' || !std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 2147483647.0)
      return false;
    v = static_cast<long>(d);
  }
  *out = v;
  return true;
}

bool parse_double(const std::string& text, double* out) {
  std::string s = trim(text);
  if (s.empty()) return false;
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (*end != '\0') return false;
  *out = v;
  return true;
}
}  // namespace

void clear_error_messages() {
  // MXerrorMsgs holds exactly one std::vector<std::stringstream*> (lib_api.h, compiled into this
  // library): reset it in place. The static_assert guards the layout assumption.
  using Messages = std::vector<std::stringstream*>;
  static_assert(sizeof(mxnet::ext::MXerrorMsgs) == sizeof(Messages),
                "lib_api.h MXerrorMsgs layout changed");
  static std::mutex lock;
  std::lock_guard<std::mutex> guard(lock);
  auto* messages = reinterpret_cast<Messages*>(mxnet::ext::MXerrorMsgs::get());
  for (auto* message : *messages) delete message;
  messages->clear();
}

int num_threads() {
  if (g_forked_child.load()) return 1;
  int n = g_threads.load();
  if (n <= 0) n = omp_get_max_threads();
  return n < 1 ? 1 : n;
}

bool attr_int(const Attrs& attrs, const char* op, const char* key, int default_value, int* out) {
  auto it = attrs.find(key);
  if (it == attrs.end()) {
    *out = default_value;
    return true;
  }
  long v = 0;
  if (!parse_long(it->second, &v) || v < -2147483647L || v > 2147483647L) {
    DETOPS_ERROR << op << ": attribute " << key << "='" << it->second << "' is not an integer";
    return false;
  }
  *out = static_cast<int>(v);
  return true;
}

bool attr_required_int(const Attrs& attrs, const char* op, const char* key, int* out) {
  if (attrs.find(key) == attrs.end()) {
    DETOPS_ERROR << op << ": required attribute " << key << " is missing";
    return false;
  }
  return attr_int(attrs, op, key, 0, out);
}

bool attr_float(const Attrs& attrs, const char* op, const char* key, float default_value,
                float* out) {
  auto it = attrs.find(key);
  if (it == attrs.end()) {
    *out = default_value;
    return true;
  }
  double v = 0;
  if (!parse_double(it->second, &v) || !std::isfinite(v)) {
    DETOPS_ERROR << op << ": attribute " << key << "='" << it->second
                 << "' is not a finite number";
    return false;
  }
  *out = static_cast<float>(v);
  return true;
}

bool attr_required_float(const Attrs& attrs, const char* op, const char* key, float* out) {
  if (attrs.find(key) == attrs.end()) {
    DETOPS_ERROR << op << ": required attribute " << key << " is missing";
    return false;
  }
  return attr_float(attrs, op, key, 0.f, out);
}

bool attr_bool(const Attrs& attrs, const char* op, const char* key, bool default_value,
               bool* out) {
  auto it = attrs.find(key);
  if (it == attrs.end()) {
    *out = default_value;
    return true;
  }
  std::string s = trim(it->second);
  for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (s == "true" || s == "1") {
    *out = true;
  } else if (s == "false" || s == "0") {
    *out = false;
  } else {
    DETOPS_ERROR << op << ": attribute " << key << "='" << it->second
                 << "' is not a boolean (True/False/1/0)";
    return false;
  }
  return true;
}

bool attr_float_tuple(const Attrs& attrs, const char* op, const char* key,
                      const std::vector<float>& default_value, std::vector<float>* out) {
  auto it = attrs.find(key);
  if (it == attrs.end()) {
    *out = default_value;
    return true;
  }
  std::string s = trim(it->second);
  if (s.size() >= 2 && ((s.front() == '(' && s.back() == ')') ||
                        (s.front() == '[' && s.back() == ']'))) {
    s = s.substr(1, s.size() - 2);
  }
  std::vector<float> values;
  std::stringstream stream(s);
  std::string item;
  bool ok = true;
  while (std::getline(stream, item, ',')) {
    if (trim(item).empty()) continue;  // "(8,)" and trailing commas
    double v = 0;
    if (!parse_double(item, &v) || !std::isfinite(v)) {
      ok = false;
      break;
    }
    values.push_back(static_cast<float>(v));
  }
  if (!ok || values.empty()) {
    DETOPS_ERROR << op << ": attribute " << key << "='" << it->second
                 << "' is not a non-empty tuple of numbers such as (8, 16, 32)";
    return false;
  }
  *out = values;
  return true;
}

bool check_attr_names(const Attrs& attrs, const char* op, const std::vector<std::string>& known) {
  for (const auto& kv : attrs) {
    const std::string& name = kv.first;
    if (name.size() >= 2 && name.compare(0, 2, "__") == 0) continue;
    bool found = false;
    for (const auto& k : known) found = found || (k == name);
    if (!found) {
      std::ostringstream names;
      for (size_t i = 0; i < known.size(); ++i) names << (i ? ", " : "") << known[i];
      DETOPS_ERROR << op << ": unknown attribute '" << name << "' (known: " << names.str() << ")";
      return false;
    }
  }
  return true;
}

std::string shape_str(const std::vector<unsigned int>& shape) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  if (shape.size() == 1) os << ",";
  os << ")";
  return os.str();
}

std::string shape_str(const MXTensor& tensor) {
  std::vector<unsigned int> s(tensor.shape.begin(), tensor.shape.end());
  return shape_str(s);
}

const char* dtype_name(int dtype) {
  switch (dtype) {
    case mxnet::ext::kFloat32: return "float32";
    case mxnet::ext::kFloat64: return "float64";
    case mxnet::ext::kFloat16: return "float16";
    case mxnet::ext::kUint8: return "uint8";
    case mxnet::ext::kInt32: return "int32";
    case mxnet::ext::kInt8: return "int8";
    case mxnet::ext::kInt64: return "int64";
    default: return "unknown";
  }
}

bool infer_same_float_type(const char* op, const std::vector<std::string>& input_names,
                           bool allow_double, std::vector<int>* in_types,
                           std::vector<int>* out_types) {
  int dtype = (*in_types)[0];
  for (size_t i = 0; i < in_types->size(); ++i) {
    int t = (*in_types)[i];
    bool supported = t == mxnet::ext::kFloat32 || (allow_double && t == mxnet::ext::kFloat64);
    if (!supported) {
      DETOPS_ERROR << op << ": input " << input_names[i] << " has dtype " << dtype_name(t)
                   << "; supported: float32" << (allow_double ? " or float64" : "");
      return false;
    }
    if (t != dtype) {
      DETOPS_ERROR << op << ": input " << input_names[i] << " has dtype " << dtype_name(t)
                   << " but " << input_names[0] << " has " << dtype_name(dtype)
                   << "; all inputs must have the same dtype";
      return false;
    }
  }
  for (auto& t : *out_types) t = dtype;
  return true;
}

void zero_outputs(std::vector<MXTensor>* outputs) {
  for (auto& t : *outputs) {
    size_t bytes = static_cast<size_t>(t.size()) *
                   (t.dtype == mxnet::ext::kFloat64 ? sizeof(double) : sizeof(float));
    if (bytes) std::memset(t.data_ptr, 0, bytes);
  }
}

}  // namespace detops

// ---- C entry points -------------------------------------------------------------------------

extern "C" {

// Thread count for the kernels; n <= 0 restores the OpenMP default. Called by lib.ops.
void detops_set_num_threads(int n) { detops::g_threads.store(n); }

int detops_get_num_threads() { return detops::num_threads(); }

// SHA-256 of the sources this library was built from (see operator_cxx/build.py).
const char* detops_source_hash() { return DETOPS_SOURCE_HASH; }

}  // extern "C"

mxnet::ext::MXReturnValue initialize(int version) {
  if (version < 10700) {
    MX_ERROR_MSG << "libdetops needs MXNet >= 1.7 (extension API v" << MX_LIBRARY_VERSION
                 << "); this MXNet reports version " << version;
    return mxnet::ext::MX_FAIL;
  }
  static std::once_flag once;
  std::call_once(once, [] { pthread_atfork(nullptr, nullptr, detops::on_fork_child); });
  return mxnet::ext::MX_SUCCESS;
}
