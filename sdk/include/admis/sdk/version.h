#pragma once
// ABI versioning of the plugin boundary.
//
// MAJOR: bumped when an existing interface changes incompatibly (a virtual function added,
//        removed or reordered in a kind's interface, a field of the descriptor or of a
//        shared struct changed). The host refuses plugins whose major differs.
// MINOR: bumped when something is only added in a way old plugins cannot notice: a new
//        field appended to the end of admis_plugin_descriptor, a new kind, a new parameter
//        type. The host reads an appended slot only when the plugin's minor says it exists.

// 2.1: admis/sdk/batch_norm.h (batch norm layers the host can synchronise across ranks).
#define ADMIS_ABI_MAJOR 2
#define ADMIS_ABI_MINOR 1
#define ADMIS_SDK_VERSION "0.3.0"

// Exported for every type whose identity must be shared between the host and the plugins
// (exception types caught across the boundary, interfaces used with dynamic_cast).
#define ADMIS_SDK_API __attribute__((visibility("default")))
