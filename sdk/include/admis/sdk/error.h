#pragma once
#include <stdexcept>
#include <string>

#include "admis/sdk/version.h"

namespace admis {

// The one exception type that crosses the plugin boundary. It always names the plugin
// (or the file, key or stage) the message is about, so the user can tell where to look.
class ADMIS_SDK_API Error : public std::runtime_error {
 public:
  Error(std::string where, const std::string& message)
      : std::runtime_error(where.empty() ? message : where + ": " + message), where_(std::move(where)) {}
  const std::string& where() const noexcept { return where_; }

 private:
  std::string where_;
};

}  // namespace admis
