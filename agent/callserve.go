package agent

import "context"

// callLoop answers the calls the hub hands this provider.
func (a *Agent) callLoop(ctx context.Context) { <-ctx.Done() }
