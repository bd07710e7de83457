//go:build tools

// Package tools names the commands this module exists to build.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
