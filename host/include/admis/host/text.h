#pragma once
// Small text helpers for messages: joining, splitting, and "did you mean" suggestions.

#include <exception>
#include <string>
#include <vector>

#include "admis/sdk/params.h"

namespace admis::host {

std::string join(const std::vector<std::string>& parts, const std::string& separator);
std::vector<std::string> split(const std::string& text, char separator);
std::size_t edit_distance(const std::string& a, const std::string& b);
// "; did you mean 'x'?" for the closest candidate within a small edit distance, else "".
std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates);
// An exception's message for users: LibTorch errors without their C++ backtrace.
std::string describe(const std::exception& e);
// A parameter value as a manifest would spell it.
std::string format_value(const Value& v);

// A duration as H:MM:SS (progress lines' ETA).
std::string format_duration(double seconds);

}  // namespace admis::host
