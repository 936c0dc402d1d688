from robustpath.bench import main

raise SystemExit(main())
