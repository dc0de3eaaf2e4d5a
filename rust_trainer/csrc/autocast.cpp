// Sets the dtype CUDA autocast computes in. tch switches autocast on and off but leaves the
// dtype at libtorch's default (float16); --amp asks for bfloat16, which needs no loss scaling.
#include <ATen/autocast_mode.h>

extern "C" int rust_trainer_set_autocast_bf16() {
  try {
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
    return 0;
  } catch (...) {
    return 1;
  }
}
