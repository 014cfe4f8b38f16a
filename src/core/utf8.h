// Small UTF-8 helpers shared by the text-handling code (PNG text chunks, infotext).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace sdserve {

// Length of the valid UTF-8 sequence starting at s[i], or 0 if it is not one.
size_t utf8_len(std::string_view s, size_t i);

// `s` made safe to quote in an error message, whatever bytes it holds (names read from files and
// requests): control bytes and invalid UTF-8 become \xNN, so messages stay one line of valid
// UTF-8 (they end up in JSON logs and HTTP responses); cut at about max_len bytes with "...".
std::string printable(std::string_view s, size_t max_len = 160);

// Appends code point `cp` (<= 0x10FFFF) as UTF-8.
inline void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

}  // namespace sdserve
