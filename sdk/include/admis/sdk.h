#pragma once
// Everything a plugin author needs: include this one header. (A backbone that offers
// synchronised batch norm also includes admis/sdk/batch_norm.h.)
#include "admis/sdk/error.h"
#include "admis/sdk/host.h"
#include "admis/sdk/kinds.h"
#include "admis/sdk/params.h"
#include "admis/sdk/plugin.h"
#include "admis/sdk/version.h"
