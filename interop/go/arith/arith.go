// Package arith is the Arith service of Go's net/rpc tutorials, shared by the interop
// server and client (netrpc's copy is examples/support/arith.rs, with the same JSON names).
package arith

import "errors"

// Args are the operands of every Arith method: {"A":7,"B":8} on the wire.
type Args struct {
	A, B int
}

// Quotient is the reply of Arith.Divide: {"Quo":3,"Rem":2} on the wire.
type Quotient struct {
	Quo, Rem int
}

// Arith is the service.
type Arith int

// Multiply sets reply to A * B.
func (t *Arith) Multiply(args *Args, reply *int) error {
	*reply = args.A * args.B
	return nil
}

// Sum sets reply to A + B.
func (t *Arith) Sum(args *Args, reply *int) error {
	*reply = args.A + args.B
	return nil
}

// Divide sets quo to A / B and A % B; a zero B is the method's error.
func (t *Arith) Divide(args *Args, quo *Quotient) error {
	if args.B == 0 {
		return errors.New("divide by zero")
	}
	quo.Quo = args.A / args.B
	quo.Rem = args.A % args.B
	return nil
}
