// Internal helpers shared by image.cc, jpeg.cc and webp.cc (not part of the public API).
#pragma once
#include <cstdint>
#include <string>

#include "core/error.h"
#include "io/image.h"

namespace sdserve::image_detail {

// Throws InvalidArgument when the input is larger than the limits allow.
inline void check_input_size(const char* format, size_t size, const ImageLimits& limits) {
  if (size > limits.max_input_bytes)
    throw InvalidArgument(std::string(format) + ": input is " + std::to_string(size) + " bytes; the limit is " +
                          std::to_string(limits.max_input_bytes) + " (send a smaller file)");
}

// True when a width x height image is within the limits (checked before any pixel is allocated).
inline bool within_limits(uint64_t width, uint64_t height, const ImageLimits& limits) {
  return width <= limits.max_width && height <= limits.max_height && width * height <= limits.max_pixels;
}

inline std::string limit_message(const char* format, uint64_t width, uint64_t height, const ImageLimits& limits) {
  return std::string(format) + ": image is " + std::to_string(width) + "x" + std::to_string(height) +
         "; the limit is " + std::to_string(limits.max_width) + "x" + std::to_string(limits.max_height) + " and " +
         std::to_string(limits.max_pixels) + " pixels (send a smaller image)";
}

inline void check_dimensions(const char* format, uint64_t width, uint64_t height, const ImageLimits& limits) {
  if (width == 0 || height == 0)
    throw InvalidArgument(std::string(format) + ": image has no pixels (" + std::to_string(width) + "x" +
                          std::to_string(height) + ")");
  if (!within_limits(width, height, limits)) throw InvalidArgument(limit_message(format, width, height, limits));
}

}  // namespace sdserve::image_detail
