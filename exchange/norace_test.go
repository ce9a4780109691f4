//go:build !race

package exchange

// raceDetector is set under -race, which slows encoding/xml some twelve
// times: tests that stream tens of MiB through the parser use less.
const raceDetector = false
