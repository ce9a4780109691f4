package pipeline

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestRunRouterFailsLeavesNoWatcher proves that when the router fails
// before it runs (here a delivery consumer JetStream refuses: its name is
// over 255 bytes), Run returns the error without leaving behind, for ever,
// the goroutine that waits for the router to run.
func TestRunRouterFailsLeavesNoWatcher(t *testing.T) {
	b := testBus(t)
	code := strings.Repeat("Ц", 42)
	p := newPipeline(t, "relay: { id: r1, listen: \"127.0.0.1:1\" }\nnodes:\n  "+code+": { deliver: { dir: ./in } }\n",
		b, scriptedEndpoints{code: &scriptedDelivery{}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Run(ctx); err == nil {
		t.Fatal("Run with a consumer JetStream refuses returned no error")
	}
	buf := make([]byte, 1<<20)
	stacks := string(buf[:runtime.Stack(buf, true)])
	if strings.Contains(stacks, "pipeline.(*Pipeline).Run.func1") {
		t.Fatalf("Run returned and left its watcher of the router waiting:\n%s", stacks)
	}
	if p.Ready() {
		t.Error("a pipeline whose router never ran is ready")
	}
}
