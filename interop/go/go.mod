module netrpc.example/interop

go 1.19
